// The exact nearest code under rounded GEMM operands; the bound and the three outcomes of a
// row are derived in docs/ibq.md ("Exact index with half-precision GEMMs").
#include "ibq/ibq_exact.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/dispatch.h"

namespace dcae_ext {
namespace {

constexpr double kFloat32Max = std::numeric_limits<float>::max();
constexpr double kFloat32Min = std::numeric_limits<float>::min();  // smallest normal
constexpr double kUnitRoundoff32 = 0x1p-24;
constexpr int64_t kRerankBytes = int64_t(32) << 20;  // float64 candidate vectors gathered at once
constexpr int64_t kFullRowBytes = int64_t(64) << 20;  // float64 logits and codes of one full-row tile

struct HalfFormat {
  double unit_roundoff, smallest_normal, largest;
};

HalfFormat half_format(at::ScalarType dtype) {
  if (dtype == at::kHalf) return {0x1p-11, 0x1p-14, 65504.0};
  return {0x1p-8, 0x1p-126, 0x1.FEp127};  // bfloat16
}

// True when every element of z and codebook is finite and below `largest` in magnitude, so
// rounding to the half dtype neither overflows nor meets a NaN. Two reductions in the inputs'
// dtype (the largest magnitude is one of the elements, exact there), one host sync.
bool within_range(const at::Tensor& z, const at::Tensor& codebook, double largest) {
  const at::Tensor z_max = z.numel() ? at::linalg_vector_norm(z, INFINITY) : at::zeros({}, z.options());
  const at::Tensor maxima = at::stack({z_max, at::linalg_vector_norm(codebook, INFINITY)}).to(at::kDouble).cpu();
  const double* m = maxima.data_ptr<double>();
  return m[0] < largest && m[1] < largest;  // false for NaN
}

// cuBLAS's own rounding of float32 operands, per torch's precision for CUDA matmuls (the
// backend-specific setting, which also reflects allow_tf32 and set_float32_matmul_precision;
// the legacy getters throw once both APIs were used): TF32 (10 bits; truncation assumed, so
// 2^-10), bf16 (8 bits), or none.
double cublas_float32_roundoff() {
  const at::Float32Precision precision =
      at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
  if (precision == at::Float32Precision::BF16) return 0x1p-8;
  return precision == at::Float32Precision::TF32 ? 0x1p-10 : 0.0;
}

// cuBLAS refuses half operands with float32 output under allow_fp16_accumulation.
bool fp16_gemms_accumulate_in_fp16() { return at::globalContext().allowFP16AccumulationCuBLAS(); }

}  // namespace

at::Tensor IbqOperands::prepare(const at::Tensor& x) const {
  if (rounded_through != at::ScalarType::Undefined) return x.to(rounded_through).to(gemm_dtype);
  return x.to(gemm_dtype);
}

void check_gemm_dtype(const at::Tensor& z, c10::optional<at::ScalarType> gemm_dtype) {
  if (!gemm_dtype.has_value() || *gemm_dtype == z.scalar_type()) return;
  const at::ScalarType dtype = *gemm_dtype;
  DCAE_CHECK_ARG(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat, "gemm_dtype",
                 "expected None, torch.float32, torch.bfloat16 or torch.float16, got ", dtype);
  DCAE_CHECK_ARG(z.scalar_type() == at::kFloat, "gemm_dtype", dtype,
                 " GEMMs need float32 inputs (the exact values), got z of dtype ", z.scalar_type());
}

IbqOperands ibq_operands(const at::Tensor& z, const at::Tensor& codebook, c10::optional<at::ScalarType> gemm_dtype) {
  const bool half = gemm_dtype.has_value() && (*gemm_dtype == at::kHalf || *gemm_dtype == at::kBFloat16) &&
                    z.scalar_type() == at::kFloat;
  if (z.is_cuda()) {
    if (fp16_gemms_accumulate_in_fp16()) {
      // float32 logits from fp16 operands are refused there: fp16 inputs and an fp16 gemm_dtype
      // take float32 operands instead, exact (or TF32, below)
      if (z.scalar_type() == at::kHalf) return {at::kFloat};
      if (half && *gemm_dtype == at::kHalf) return ibq_operands(z, codebook, at::kFloat);
    }
    if (half) {
      const HalfFormat format = half_format(*gemm_dtype);
      // bf16 / fp16 operands multiply on tensor cores into float32 logits (aten::mm.dtype).
      if (within_range(z, codebook, format.largest)) {
        return {*gemm_dtype, at::ScalarType::Undefined, format.unit_roundoff, format.smallest_normal};
      }
    }
    if (z.scalar_type() == at::kFloat) {
      const double roundoff = cublas_float32_roundoff();
      if (roundoff > 0) return {at::kFloat, at::ScalarType::Undefined, roundoff, kFloat32Min};
    }
    return {z.scalar_type()};
  }
  // CPU: half-precision inputs are upcast once, O((N + K) D). A half gemm_dtype is emulated:
  // the operands are rounded to it and multiplied in float32, which is exact for the products.
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  if (half) {
    const HalfFormat format = half_format(*gemm_dtype);
    if (within_range(z, codebook, format.largest)) {
      return {acc_dtype, *gemm_dtype, format.unit_roundoff, format.smallest_normal};
    }
  }
  return {acc_dtype};
}

at::Tensor ibq_exact_rerank(const at::Tensor& z, const at::Tensor& codebook, const IbqOperands& operands,
                            int64_t tile_codes, const at::Tensor& row_max, const at::Tensor& cand_value,
                            const at::Tensor& cand_code, at::Tensor& idx) {
  const int64_t D = z.size(1), K = codebook.size(0);
  const double u = operands.unit_roundoff, tiny = operands.tiny;
  // |rounded logit - exact logit| <= e_n for every code (docs/ibq.md): operand rounding and
  // underflow, float32 accumulation of the exact products, the float64 re-score's own error.
  // Norms in the inputs' float32 (no float64 copies of z and the codebook), raised to upper
  // bounds: the D + 2 roundings of a root of a sum of squares, and what underflowing squares may
  // drop. An overflow gives inf, and such a row is never trusted.
  const double d = static_cast<double>(D);
  const double norm_slack = 1 + (d + 2) * kUnitRoundoff32, norm_floor = std::sqrt(d * kFloat32Min);
  const at::Tensor z_norm = at::linalg_vector_norm(z, 2, {1}).to(at::kDouble) * norm_slack + norm_floor;
  const at::Tensor code_norm =
      at::linalg_vector_norm(codebook, 2, {1}).max().to(at::kDouble) * norm_slack + norm_floor;
  const at::Tensor norm_product = z_norm * code_norm;
  const at::Tensor bound = (2 * u + u * u + 4 * d * kUnitRoundoff32) * norm_product +
                           tiny * (1 + u) * std::sqrt(d) * (z_norm + code_norm) + d * (tiny * tiny + kFloat32Min);
  const at::Tensor values = cand_value.to(at::kDouble);
  const at::Tensor top = values.select(1, 0);
  // a row whose logits may leave the float32 range, or hold a NaN / inf, is never certified
  const at::Tensor trusted = row_max.isfinite().logical_and(norm_product < kFloat32Max / 4);
  const at::Tensor certified = trusted.logical_and(top - values.select(1, 1) > 2 * bound);
  const at::Tensor among_candidates = trusted.logical_and(top - values.select(1, kIbqCandidates - 1) > 2 * bound);
  const at::Tensor status =
      at::where(certified, 0, at::where(among_candidates, 1, 2)).to(at::kChar);

  // Candidates: the exact argmax lies among them; float64 scores (exact products, sums to
  // ~D 2^-53), the best with ties to the lowest code.
  const at::Tensor rerank_rows = (status == kCandidates).nonzero().select(1, 0);
  const int64_t chunk = std::max<int64_t>(1, kRerankBytes / (kIbqCandidates * D * 8));
  for (int64_t first = 0; first < rerank_rows.size(0); first += chunk) {
    const at::Tensor rows = rerank_rows.narrow(0, first, std::min(chunk, rerank_rows.size(0) - first));
    const int64_t m = rows.size(0);
    const at::Tensor codes = cand_code.index_select(0, rows);
    const at::Tensor vectors =
        codebook.index_select(0, codes.clamp_min(0).flatten()).to(at::kDouble).view({m, kIbqCandidates, D});
    at::Tensor scores = at::bmm(vectors, z.index_select(0, rows).to(at::kDouble).unsqueeze(2)).squeeze(2);
    scores.masked_fill_(codes < 0, -std::numeric_limits<double>::infinity());
    const at::Tensor best = scores.amax({1}, true);
    const at::Tensor chosen =
        at::where(scores == best, codes, std::numeric_limits<int64_t>::max()).amin({1});
    idx.index_copy_(0, rows, chosen);
  }

  // The rest: the whole row in float64, tile by tile (torch.argmax's order: NaN first).
  const at::Tensor full_rows = (status == kFullRow).nonzero().select(1, 0);
  if (full_rows.size(0) > 0) {
    const at::Tensor z_rows = z.index_select(0, full_rows).to(at::kDouble);
    at::Tensor best = at::full({full_rows.size(0)}, -std::numeric_limits<double>::infinity(), z_rows.options());
    at::Tensor best_code = at::zeros({full_rows.size(0)}, idx.options());
    // tiles sized for these few rows, not the forward's N: far fewer GEMMs and float64 copies
    const int64_t step = std::max<int64_t>(tile_codes, kFullRowBytes / (8 * (full_rows.size(0) + D)));
    for (int64_t first_code = 0; first_code < K; first_code += step) {
      const int64_t codes = std::min(step, K - first_code);
      const at::Tensor logits = at::mm(z_rows, codebook.narrow(0, first_code, codes).to(at::kDouble).t());
      const at::Tensor tile_arg = logits.argmax(1);
      const at::Tensor tile_best = logits.gather(1, tile_arg.unsqueeze(1)).squeeze(1);
      // strict, so earlier tiles win ties
      const at::Tensor wins = (tile_best > best).logical_or(tile_best.isnan().logical_and(best.isnan().logical_not()));
      best = at::where(wins, tile_best, best);
      best_code = at::where(wins, tile_arg + first_code, best_code);
    }
    idx.index_copy_(0, full_rows, best_code);
  }
  return status;
}

}  // namespace dcae_ext
