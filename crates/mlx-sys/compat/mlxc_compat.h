/* Force-included (`-include`) into every mlx-c translation unit by crates/mlx-sys/build.rs.
 *
 * 1. mlx-c 0.7.0 calls std::format, which GCC 12's libstdc++ lacks. Where the standard library
 *    has no <format>, supply the small subset mlx-c uses: sequential "{}" placeholders.
 * 2. mlx-c declares its float16/bfloat16 accessors only where the compiler has native half types
 *    (aarch64), but mlx-rs calls them on every target. Elsewhere, use MLX's own software half
 *    types so the accessors are compiled.
 */
#ifndef MLXI_MLXC_COMPAT_H
#define MLXI_MLXC_COMPAT_H

#ifdef __cplusplus
#include <version>

#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <utility>

namespace std {
namespace mlxi_compat {
inline void format_into(std::ostringstream& out, const char* fmt) {
  for (; *fmt; ++fmt) {
    out << *fmt;
  }
}
template <typename T, typename... Rest>
void format_into(std::ostringstream& out, const char* fmt, T&& value, Rest&&... rest) {
  for (; *fmt; ++fmt) {
    if (fmt[0] == '{' && fmt[1] == '}') {
      out << std::forward<T>(value);
      format_into(out, fmt + 2, std::forward<Rest>(rest)...);
      return;
    }
    out << *fmt;
  }
}
} // namespace mlxi_compat

template <typename... Args>
std::string format(const char* fmt, Args&&... args) {
  std::ostringstream out;
  mlxi_compat::format_into(out, fmt, std::forward<Args>(args)...);
  return out.str();
}
} // namespace std
#endif // !__cpp_lib_format

#if !defined(__aarch64__) && !defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
#include "mlx/types/half_types.h"
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#define HAS_FLOAT16
#define HAS_BFLOAT16
#endif

#endif // __cplusplus
#endif // MLXI_MLXC_COMPAT_H
