// Compile-time switches in flash-attention's style (csrc/flash_attn/src/static_switch.h): turn a
// runtime flag into a constexpr template argument without an if/else chain per call site.
//
//   DCAE_BOOL_SWITCH(has_residual, kResidual, [&] { launch<scalar_t, kResidual>(...); });
//
// Nest them for several flags; every combination is instantiated.
#pragma once

#define DCAE_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()

// The padded head dims of the fused linear attention CUDA kernels: the smallest of 8, 16, 32,
// 64 that holds HEAD_DIM (callers route larger heads elsewhere).
#define DCAE_HEAD_DIM_SWITCH(HEAD_DIM, CONST_NAME, ...) \
  [&] {                                                 \
    if (HEAD_DIM <= 8) {                                \
      constexpr static int CONST_NAME = 8;              \
      return __VA_ARGS__();                             \
    } else if (HEAD_DIM <= 16) {                        \
      constexpr static int CONST_NAME = 16;             \
      return __VA_ARGS__();                             \
    } else if (HEAD_DIM <= 32) {                        \
      constexpr static int CONST_NAME = 32;             \
      return __VA_ARGS__();                             \
    } else {                                            \
      constexpr static int CONST_NAME = 64;             \
      return __VA_ARGS__();                             \
    }                                                   \
  }()
