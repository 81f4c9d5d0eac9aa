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
