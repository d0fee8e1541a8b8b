// Force-included (-include) by the sanitizer build only (VITQ_SANITIZE, see CMakeLists.txt), which compiles as
// C++17: clang 14 cannot compile libtorch 1.13's headers against libstdc++ 12 in C++20 mode. Supplies the few
// C++20 library pieces vitq uses.
#pragma once
#if __cplusplus < 202002L
#include <type_traits>

namespace std {
template <class To, class From>
constexpr std::enable_if_t<sizeof(To) == sizeof(From) && std::is_trivially_copyable_v<From> &&
                               std::is_trivially_copyable_v<To>,
                           To>
bit_cast(const From& from) noexcept {
  return __builtin_bit_cast(To, from);
}
}  // namespace std
#endif
