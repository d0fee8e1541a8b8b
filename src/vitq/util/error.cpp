#include "vitq/util/error.h"

namespace vitq {

std::string first_line(const std::string& message) {
  auto end = message.find('\n');
  return end == std::string::npos ? message : message.substr(0, end);
}

}  // namespace vitq
