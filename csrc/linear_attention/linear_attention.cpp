// Schemas, argument checks and the ATen composite of the linear attention ops; kernels in
// linear_attention_cpu.cpp / linear_attention_cuda.cu.
#include "linear_attention/linear_attention.h"

#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "common/dispatch.h"

namespace dcae_ext {

AttentionGeometry check_linear_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              double eps, const at::Tensor& grad_out) {
  DCAE_CHECK_DIM(q, "q", 4);
  DCAE_CHECK_DIM(k, "k", 4);
  DCAE_CHECK_DIM(v, "v", 4);
  DCAE_CHECK_FLOATING(q, "q");
  DCAE_CHECK_SAME_DTYPE(q, "q", k, "k");
  DCAE_CHECK_SAME_DTYPE(q, "q", v, "v");
  DCAE_CHECK_SAME_DEVICE(q, "q", k, "k");
  DCAE_CHECK_SAME_DEVICE(q, "q", v, "v");
  DCAE_CHECK_ARG(k.sizes() == q.sizes(), "k", "shape ", k.sizes(), " differs from q's shape ", q.sizes());
  DCAE_CHECK_ARG(v.sizes() == q.sizes(), "v", "shape ", v.sizes(), " differs from q's shape ", q.sizes());
  DCAE_CHECK_ARG(std::isfinite(eps) && eps > 0, "eps", "must be a finite number > 0, got ", eps);
  if (grad_out.defined()) {
    DCAE_CHECK_SAME_DTYPE(q, "q", grad_out, "grad_out");
    DCAE_CHECK_SAME_DEVICE(q, "q", grad_out, "grad_out");
    DCAE_CHECK_ARG(grad_out.sizes() == q.sizes(), "grad_out", "shape ", grad_out.sizes(),
                   " differs from q's shape ", q.sizes());
  }
  return {q.size(0), q.size(1), q.size(2), q.size(3)};
}

at::Tensor linear_attention_composite(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps) {
  const auto acc = accumulation_dtype(q.scalar_type());
  const at::Tensor qr = at::relu(q.to(acc)), kr = at::relu(k.to(acc)), vv = v.to(acc);
  const at::Tensor vk = at::matmul(vv, kr.transpose(-1, -2));                 // (B, H, d, d)
  const at::Tensor ksum = kr.sum(-1, /*keepdim=*/true);                       // (B, H, d, 1)
  const at::Tensor den = (ksum * qr).sum(-2, /*keepdim=*/true) + eps;         // (B, H, 1, N)
  return (at::matmul(vk, qr) / den).to(q.scalar_type()).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_attention_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps) {
  const auto acc = accumulation_dtype(q.scalar_type());
  const at::Tensor qr = at::relu(q.to(acc)), kr = at::relu(k.to(acc)), vv = v.to(acc), g = grad_out.to(acc);
  const at::Tensor vk = at::matmul(vv, kr.transpose(-1, -2));
  const at::Tensor ksum = kr.sum(-1, /*keepdim=*/true);
  const at::Tensor den = (ksum * qr).sum(-2, /*keepdim=*/true) + eps;
  const at::Tensor w = at::matmul(vk.transpose(-1, -2), g);                   // vk^T G
  const at::Tensor dden = -(w * qr).sum(-2, /*keepdim=*/true) / (den * den);
  const at::Tensor dq = (w / den + ksum * dden) * (q > 0);
  const at::Tensor dvk = at::matmul(g / den, qr.transpose(-1, -2));
  const at::Tensor dksum = (dden * qr).sum(-1, /*keepdim=*/true);
  const at::Tensor dv = at::matmul(dvk, kr);
  const at::Tensor dk = (at::matmul(dvk.transpose(-1, -2), vv) + dksum) * (k > 0);
  const auto out_type = q.scalar_type();
  return {dq.to(out_type).contiguous(), dk.to(out_type).contiguous(), dv.to(out_type).contiguous()};
}

}  // namespace dcae_ext

namespace {

// The argument checks alone, for the Python side when it runs the reference instead.
void check_linear_attention_args_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double eps) {
  dcae_ext::check_linear_attention_args(q, k, v, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dcae_ext, m) {
  m.def("_check_linear_attention_args(Tensor q, Tensor k, Tensor v, float eps) -> ()",
        &check_linear_attention_args_op);
  m.def("linear_attention(Tensor q, Tensor k, Tensor v, float eps) -> Tensor");
  m.def("_linear_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, float eps) "
        "-> (Tensor, Tensor, Tensor)");
}
