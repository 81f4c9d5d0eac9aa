// ReLU linear attention of the EfficientViT blocks (DESIGN.md 2.2), per (batch, head):
//   state = [vk; ksum] = [sum_m v_m relu(k_m)^T ; sum_m relu(k_m)^T]     ((d+1) x d)
//   out_n = vk relu(q_n) / (ksum . relu(q_n) + eps)
// Backward, with den_n = ksum . relu(q_n) + eps, w_n = vk^T G_n (so G_n . num_n = w_n . relu(q_n)):
//   dden_n = -(w_n . relu(q_n)) / den_n^2,  dq_n = 1[q_n > 0] (w_n / den_n + ksum dden_n)
//   dvk = sum_n (G_n / den_n) relu(q_n)^T,  dksum = sum_n dden_n relu(q_n)
//   dv_m = dvk relu(k_m),  dk_m = 1[k_m > 0] (dvk^T v_m + dksum)
// Nothing is saved between forward and backward but q, k, v: the backward recomputes the
// (d+1) x d state (one extra pass over k, v) and never needs `out`.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace dcae_ext {

// Element (b, h, c, n) of a (B, heads, d, N) tensor sits at b*b + h*h + c*c + n*n elements.
struct HeadStrides {
  int64_t b, h, c, n;
};

inline HeadStrides head_strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

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
