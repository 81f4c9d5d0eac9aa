// Branch-free float32 exp / log for the CPU IBQ epilogues (ibq_cpu.cpp).
//
// Why: the epilogues evaluate several exp / log per logit (N * K of them). gcc does not vectorise
// calls to libm's expf / logf, and at::vec::Vectorized falls back to scalar loops in an extension
// built without ATen's CPU_CAPABILITY flags. These inline versions use only +, *, compares,
// selects and 32-bit integer ops, so a `#pragma omp simd` loop that calls them vectorises
// (gcc if-converts the float selects only with -fno-trapping-math, set in setup.py; without it
// the loops stay scalar, and correct).
// double keeps std::exp / std::log, so float64 stays exact to libm.
//
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, then a degree-6 minimax polynomial
//   (the Cephes expf coefficients); about 1 ulp. x < -87.33 (below FLT_MIN, -inf included) -> 0
//   (subnormal results are flushed), x > 88.37 -> +inf, NaN -> NaN.
// log: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log(m) by a degree-9 polynomial in m - 1 (the
//   Cephes logf coefficients); about 1 ulp. Subnormals are scaled into the normal range first;
//   log(0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, NaN -> NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Forced: a call left out of line (gcc's size heuristics in big loop bodies) stops vectorisation.
#if defined(__GNUC__)
#define DCAE_FORCE_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define DCAE_FORCE_INLINE __forceinline
#else
#define DCAE_FORCE_INLINE inline
#endif

// The extension is built without -march flags (baseline x86-64 is SSE2, 4 float lanes). The row
// kernels that call fast_exp / fast_log are also compiled for AVX2 and AVX-512 (8 / 16 lanes;
// 2.5-4.5x faster on these loops), picked once at load time by gcc's ifunc dispatch.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DCAE_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCAE_SIMD_CLONES
#endif

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

DCAE_FORCE_INLINE float fast_log(float x) {
  constexpr float kSqrtHalf = 0.70710678118654752f;
  constexpr float kMinNormal = 1.17549435e-38f;
  constexpr float kTwo23 = 8388608.0f;
  const bool subnormal = x < kMinNormal;
  const float xs = subnormal ? x * kTwo23 : x;
  const int32_t bits = float_to_bits(xs);
  const float m_raw = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const int32_t e_raw = ((bits >> 23) & 0xff) - 126 - (subnormal ? 23 : 0);
  const bool low = m_raw < kSqrtHalf;
  const float f = (low ? m_raw + m_raw : m_raw) - 1.0f;  // m in [sqrt(1/2), sqrt(2))
  const float e = static_cast<float>(low ? e_raw - 1 : e_raw);
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  y = (f + y) + e * 0.693359375f;
  const float inf = std::numeric_limits<float>::infinity();
  y = x == inf ? inf : y;
  y = x == 0.0f ? -inf : y;
  return x >= 0.0f ? y : std::numeric_limits<float>::quiet_NaN();  // x < 0 or NaN
}

inline double fast_exp(double x) { return std::exp(x); }
inline double fast_log(double x) { return std::log(x); }

}  // namespace dcae_ext
