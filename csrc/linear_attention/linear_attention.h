// ReLU linear attention of the EfficientViT blocks: what the CPU and CUDA kernels share. The
// math, forward and backward, is in docs/linear_attention.md; q, k, v, out are (B, heads, d, N).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/tensor_access.h"

namespace dcae_ext {

struct AttentionGeometry {
  int64_t batch, heads, dim, tokens;
  int64_t heads_total() const { return batch * heads; }
};

// Checks q, k, v (and grad_out when defined): 4-D, floating, same shape, dtype and device.
AttentionGeometry check_linear_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              double eps, const at::Tensor& grad_out = at::Tensor());

// The CUDA kernels are templated on d <= this; larger heads (and float64 inputs, the gradcheck
// dtype) run `linear_attention_composite`.
constexpr int64_t kMaxFusedCudaHeadDim = 64;

// The same math in ATen ops (float32 / float64 accumulation): the fallback for head dims the
// fused CUDA kernels do not cover.
at::Tensor linear_attention_composite(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_attention_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps);

}  // namespace dcae_ext
