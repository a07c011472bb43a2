/* Force-included by bindgen (clang) on targets without native half types, so that the
 * float16/bfloat16 accessors of mlx/c/array.h are declared with the Rust types mlx-rs expects:
 * `float16_t` as bindgen's half-float struct, `bfloat16_t` as u16 (as on aarch64). */
#ifndef MLXI_BINDGEN_HALF_H
#define MLXI_BINDGEN_HALF_H
typedef __fp16 float16_t;
typedef unsigned short bfloat16_t;
#define HAS_FLOAT16
#define HAS_BFLOAT16
#endif
