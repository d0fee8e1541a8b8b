// vitq::Error — the one exception type the library throws for bad input. Its message is one line that names
// the problem (the file, tensor or option at fault); the CLI prints it and exits nonzero.
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join: in format.h before fmt 11; the libtorch of a pip PyTorch 2.x bundles fmt 11

#include <stdexcept>
#include <string>

namespace vitq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// First line of an exception message (c10::Error messages carry a multi-line backtrace).
std::string first_line(const std::string& message);

}  // namespace vitq
