// Branch-free float32 exp for the CPU IBQ epilogues (ibq_cpu.cpp).
//
// Why: the epilogues evaluate one or two exp per logit (N * K of them). gcc does not vectorise
// calls to libm's expf, and at::vec::Vectorized falls back to scalar loops in an extension
// built without ATen's CPU_CAPABILITY flags. These inline versions use only +, *, compares,
// selects and 32-bit integer ops, so a `#pragma omp simd` loop that calls them vectorises
// (gcc if-converts the float selects only with -fno-trapping-math, set in setup.py; without it
// the loops stay scalar, and correct).
// double keeps std::exp, so float64 stays exact to libm.
//
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, then a degree-6 minimax polynomial
//   (the Cephes expf coefficients); about 1 ulp. x < -87.33 (below FLT_MIN, -inf included) -> 0
//   (subnormal results are flushed), x > 88.37 -> +inf, NaN -> NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/cpu_simd.h"

namespace dcae_ext {

DCAE_FORCE_INLINE float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

DCAE_FORCE_INLINE int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

DCAE_FORCE_INLINE float fast_exp(float x) {
  constexpr float kLo = -87.33654475f;   // log(FLT_MIN)
  constexpr float kHi = 88.37626266f;    // keeps n <= 127
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // exact in 10 bits: n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;   // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < kLo ? kLo : (x > kHi ? kHi : x);  // NaN passes through
  const float shifted = xc * kLog2e + kRound;
  const float n = shifted - kRound;
  const uint32_t ni =  // n, read from the low mantissa bits
      static_cast<uint32_t>(float_to_bits(shifted)) - static_cast<uint32_t>(float_to_bits(kRound));
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float y = p * bits_to_float(static_cast<int32_t>((ni + 127u) << 23));  // p * 2^n
  const float big = x > kHi ? std::numeric_limits<float>::infinity() : y;
  return x < kLo ? 0.0f : big;
}

inline double fast_exp(double x) { return std::exp(x); }

}  // namespace dcae_ext
