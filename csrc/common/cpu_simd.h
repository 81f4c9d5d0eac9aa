// How the CPU kernels get vector code from a portable build (no -march flags: the baseline
// x86-64 target is SSE2).
#pragma once

// Forced inlining: a helper left out of line (gcc's size heuristics in big loop bodies) stops
// the vectorisation of the loop that calls it.
#if defined(__GNUC__)
#define DCAE_FORCE_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define DCAE_FORCE_INLINE __forceinline
#else
#define DCAE_FORCE_INLINE inline
#endif

// Hot loops are also compiled for x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512), picked once
// at load time by gcc's ifunc dispatch (the IBQ row loops ran 2.5-4.5x faster with 8 / 16
// lanes than with SSE2's 4). gcc on x86-64 Linux only; elsewhere the baseline code runs.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DCAE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DCAE_SIMD_CLONES
#endif
