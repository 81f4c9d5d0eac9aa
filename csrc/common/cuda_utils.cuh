// CUDA helpers written once: launch geometry, launch checks.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace dcae_ext {

constexpr int kThreadsPerBlock = 256;

// Grid for a grid-stride loop over `n` items: enough blocks to fill the GPU, no more.
inline unsigned int grid_for(int64_t n, int threads = kThreadsPerBlock) {
  const int64_t wanted = (n + threads - 1) / threads;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t cap = sms * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, cap)));
}

}  // namespace dcae_ext
