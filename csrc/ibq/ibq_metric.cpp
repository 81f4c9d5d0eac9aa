// The IBQ scores per metric (ibq_metric.h); their gradients are derived in docs/ibq.md,
// "Distance metrics".
#include "ibq/ibq_metric.h"

#include <string>

#include "common/checks.h"
#include "common/dispatch.h"

namespace dcae_ext {

IbqMetric parse_metric(c10::string_view metric) {
  if (metric == "dot") return IbqMetric::kDot;
  if (metric == "l2") return IbqMetric::kL2;
  if (metric == "cosine") return IbqMetric::kCosine;
  DCAE_CHECK_ARG(false, "metric", "expected 'dot', 'l2' or 'cosine', got '", std::string(metric), "'");
  return IbqMetric::kDot;  // unreachable
}

IbqScores ibq_scores(const at::Tensor& z, const at::Tensor& codebook, IbqMetric metric) {
  IbqScores scores;
  scores.metric = metric;
  if (metric == IbqMetric::kDot) return scores;
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  // in the accumulation dtype without an upcast copy of the codebook
  scores.code_norm = at::linalg_vector_norm(codebook, 2, {1}, false, acc_dtype);
  if (metric == IbqMetric::kL2) {
    scores.code_bias = scores.code_norm.square().mul_(-0.5);
    return scores;
  }
  scores.code_scale = scores.code_norm.clamp_min(kIbqCosineEps).reciprocal_();
  scores.row_norm = at::linalg_vector_norm(z, 2, {1}, false, acc_dtype);
  scores.row_scale = scores.row_norm.clamp_min(kIbqCosineEps).reciprocal_();
  scores.unit_rows = z.to(acc_dtype) * scores.row_scale.unsqueeze(1);
  return scores;
}

at::Tensor IbqScores::z_operand(const at::Tensor& z, const IbqOperands& operands) const {
  return operands.prepare(metric == IbqMetric::kCosine ? unit_rows : z);
}

at::Tensor IbqScores::code_tile(const at::Tensor& codebook, const at::Tensor& codebook_gemm,
                                const IbqOperands& operands, int64_t first, int64_t count) const {
  if (metric != IbqMetric::kCosine) return codebook_gemm.narrow(0, first, count);
  return operands.prepare(codebook.narrow(0, first, count) * code_scale.narrow(0, first, count).unsqueeze(1));
}

void IbqScores::finish_scores(at::Tensor& slab, int64_t first) const {
  if (metric == IbqMetric::kL2) slab.add_(code_bias.narrow(0, first, slab.size(1)));
}

void IbqScores::chain_code_grad(at::Tensor grad_tile, const at::Tensor& grad_scores, const at::Tensor& codebook,
                                int64_t first) const {
  const int64_t count = grad_tile.size(0);
  if (metric == IbqMetric::kL2) {
    // d(-|c_k|^2 / 2) / d c_k = -c_k, weighted by sum_n dL_nk
    const at::Tensor weight = at::sum(grad_scores, {0}, false, grad_tile.scalar_type());
    grad_tile.sub_(codebook.narrow(0, first, count) * weight.unsqueeze(1));
  } else if (metric == IbqMetric::kCosine) {
    // d(c / max(|c|, eps)) = (I - c^ c^T [|c| >= eps]) / max(|c|, eps), c^ the normalised code
    const at::Tensor scale = code_scale.narrow(0, first, count).unsqueeze(1);
    const at::Tensor unit = codebook.narrow(0, first, count) * scale;
    const at::Tensor along = (unit * grad_tile).sum(1).mul_(code_norm.narrow(0, first, count) >= kIbqCosineEps);
    grad_tile.sub_(unit * along.unsqueeze(1)).mul_(scale);
  }
}

void IbqScores::chain_row_grad(at::Tensor& grad_z) const {
  if (metric != IbqMetric::kCosine) return;
  const at::Tensor along = (unit_rows * grad_z).sum(1).mul_(row_norm >= kIbqCosineEps);
  grad_z.sub_(unit_rows * along.unsqueeze(1)).mul_(row_scale.unsqueeze(1));
}

}  // namespace dcae_ext
