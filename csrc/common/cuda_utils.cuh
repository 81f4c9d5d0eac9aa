// CUDA helpers written once: the block size and the CUDA headers every kernel file needs
// (context, guard, launch checks).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace dcae_ext {

constexpr int kThreadsPerBlock = 256;

}  // namespace dcae_ext
