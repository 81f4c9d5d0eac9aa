// The exact nearest code; the bound and the three outcomes of a row are derived in docs/ibq.md
// ("Exact index with half-precision GEMMs", "Distance metrics").
#include "ibq/ibq_exact.h"

#include <algorithm>
#include <atomic>
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

// (N) double: e_n with |computed score - exact score| <= e_n for every code of row n, and
// (N) bool: the rows whose scores stay far enough from float32's range to be trusted at all.
// Norms in the inputs' float32 (no float64 copies of z and the codebook), raised to upper bounds:
// the D + 2 roundings of a root of a sum of squares, and what underflowing squares may drop. An
// overflow gives inf, and such a row is never trusted.
std::pair<at::Tensor, at::Tensor> score_error_bound(const at::Tensor& z, const at::Tensor& codebook,
                                                    const IbqOperands& operands, const IbqScores& scores) {
  const double d = static_cast<double>(z.size(1));
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  const double norm_slack = 1 + (d + 2) * kUnitRoundoff32, norm_floor = std::sqrt(d * kFloat32Min);
  double u_z = operands.unit_roundoff, u_c = operands.unit_roundoff, tiny = operands.tiny;
  at::Tensor z_norm, code_norm;
  if (scores.metric == IbqMetric::kCosine) {
    // The operands are fl(z r_z) and fl(c r_c), then rounded to the GEMM dtype. The target is
    // the exact r_z (z . c) r_c with the computed r_z (the same argmax as z . c r_c), so a row
    // operand errs by one more rounding, a code by its computed r_c's error too: the norm's
    // roundings, and what underflowing squares drop relative to the smallest clamped norm.
    const auto [u_new, tiny_new] = operands.rounding_of_new_values();
    const double smallest = std::max(scores.code_norm.min().item<double>(), kIbqCosineEps);
    const double scale_error = (d + 6) * kUnitRoundoff32 + norm_floor / smallest;
    u_z = (1 + u_new) * (1 + kUnitRoundoff32) - 1;
    u_c = (1 + u_new) * (1 + scale_error) * (1 + kUnitRoundoff32) - 1;
    tiny = tiny_new;
    const double slack = norm_slack * (1 + 2 * kUnitRoundoff32);  // and fl(z r_z)'s rounding
    z_norm = at::linalg_vector_norm(scores.unit_rows, 2, {1}).to(at::kDouble) * slack + norm_floor;
    code_norm = at::ones({}, z_norm.options());  // |c r_c| <= 1
  } else {
    z_norm = at::linalg_vector_norm(z, 2, {1}, false, acc_dtype).to(at::kDouble) * norm_slack + norm_floor;
    const at::Tensor norms =
        scores.code_norm.defined() ? scores.code_norm : at::linalg_vector_norm(codebook, 2, {1}, false, acc_dtype);
    code_norm = norms.max().to(at::kDouble) * norm_slack + norm_floor;
  }
  // operand rounding and underflow, float32 accumulation of the exact products (doubled for
  // hardware that truncates), with a margin for the float64 re-score's own error
  const at::Tensor norm_product = z_norm * code_norm;
  at::Tensor bound = (u_z + u_c + u_z * u_c + 4 * d * kUnitRoundoff32) * norm_product +
                     tiny * (1 + std::max(u_z, u_c)) * std::sqrt(d) * (z_norm + code_norm) +
                     d * (tiny * tiny + kFloat32Min);
  at::Tensor trusted = norm_product < kFloat32Max / 4;
  if (scores.metric == IbqMetric::kL2) {
    // the code bias -|c|^2/2 from a float32 norm, and the float32 addition to the dot product
    const at::Tensor code_square = code_norm * code_norm;
    bound = bound + (d + 4) * kUnitRoundoff32 * code_square + 2 * kUnitRoundoff32 * norm_product + d * kFloat32Min;
    trusted = trusted.logical_and(code_square < kFloat32Max / 4);
  }
  return {bound, trusted};
}

// The metric's scores in float64 from the dot products `dots` (..., codes) and the float64
// codes (..., codes, D) or (codes, D) they came from.
at::Tensor exact_scores(at::Tensor dots, const at::Tensor& codes, IbqMetric metric) {
  if (metric == IbqMetric::kL2) return dots - 0.5 * codes.square().sum(-1);
  if (metric == IbqMetric::kCosine) return dots / at::linalg_vector_norm(codes, 2, {-1}).clamp_min(kIbqCosineEps);
  return dots;
}

void warn_about_full_rows(int64_t full_rows, int64_t rows, int64_t codes) {
  static std::atomic<bool> warned{false};
  if (full_rows < kIbqFullRowWarnRows || full_rows < kIbqFullRowWarnShare * static_cast<double>(rows)) return;
  if (warned.exchange(true)) return;
  TORCH_WARN("dcae_ext: nearest code: ", full_rows, " of ", rows, " rows (", 100.0 * full_rows / rows,
             "%) had more than ", kIbqCandidates - 1, " other codes within the rounding error of their best "
             "score and were searched again over all ", codes, " codes in float64, which is slow for large "
             "codebooks. Near-duplicate codes cause this: deduplicate the codebook, or keep the GEMM operands "
             "float32 (no gemm_dtype, TF32 off). Shown once per process (docs/ibq.md, \"Three ways a row finds "
             "its code\").");
}

}  // namespace

at::Tensor ibq_exact_rerank(const at::Tensor& z, const at::Tensor& codebook, const IbqOperands& operands,
                            const IbqScores& scores, int64_t tile_codes, const at::Tensor& row_max,
                            const at::Tensor& cand_value, const at::Tensor& cand_code, at::Tensor& idx) {
  const int64_t N = z.size(0), D = z.size(1), K = codebook.size(0);
  const auto [bound, finite_range] = score_error_bound(z, codebook, operands, scores);
  const at::Tensor values = cand_value.to(at::kDouble);
  const at::Tensor top = values.select(1, 0);
  // a row whose scores may leave the float32 range, or hold a NaN / inf, is never certified
  const at::Tensor trusted = row_max.isfinite().logical_and(finite_range);
  const at::Tensor certified = trusted.logical_and(top - values.select(1, 1) > 2 * bound);
  const at::Tensor among_candidates = trusted.logical_and(top - values.select(1, kIbqCandidates - 1) > 2 * bound);
  const at::Tensor status =
      at::where(certified, 0, at::where(among_candidates, 1, 2)).to(at::kChar);

  // Candidates: the exact argmax lies among them; float64 scores (exact products, sums to
  // ~D 2^-53), the best with ties to the lowest code. Only a candidate within 2 e_n of the top
  // can hold the exact maximum (l_k <= v_k + e < v1 - e <= l_1 otherwise), and the values are
  // sorted, so those form a prefix of each list: a chunk re-scores its rows' longest such prefix.
  const at::Tensor rerank_rows = (status == kCandidates).nonzero().select(1, 0);
  const at::Tensor reachable = (top.unsqueeze(1) - values <= 2 * bound.unsqueeze(1)).sum(1);
  const int64_t chunk = std::max<int64_t>(1, kRerankBytes / (kIbqCandidates * D * 8));
  for (int64_t first = 0; first < rerank_rows.size(0); first += chunk) {
    const at::Tensor rows = rerank_rows.narrow(0, first, std::min(chunk, rerank_rows.size(0) - first));
    const int64_t m = rows.size(0);
    const int64_t width = reachable.index_select(0, rows).max().item<int64_t>();
    const at::Tensor codes = cand_code.index_select(0, rows).narrow(1, 0, width);
    const at::Tensor vectors =
        codebook.index_select(0, codes.clamp_min(0).flatten()).to(at::kDouble).view({m, width, D});
    const at::Tensor dots = at::bmm(vectors, z.index_select(0, rows).to(at::kDouble).unsqueeze(2)).squeeze(2);
    at::Tensor exact = exact_scores(dots, vectors, scores.metric);
    exact.masked_fill_(codes < 0, -std::numeric_limits<double>::infinity());
    const at::Tensor best = exact.amax({1}, true);
    const at::Tensor chosen =
        at::where(exact == best, codes, std::numeric_limits<int64_t>::max()).amin({1});
    idx.index_copy_(0, rows, chosen);
  }

  // The rest: the whole row in float64, tile by tile (torch.argmax's order: NaN first).
  const at::Tensor full_rows = (status == kFullRow).nonzero().select(1, 0);
  if (full_rows.size(0) > 0) {
    warn_about_full_rows(full_rows.size(0), N, K);
    const at::Tensor z_rows = z.index_select(0, full_rows).to(at::kDouble);
    at::Tensor best = at::full({full_rows.size(0)}, -std::numeric_limits<double>::infinity(), z_rows.options());
    at::Tensor best_code = at::zeros({full_rows.size(0)}, idx.options());
    // tiles sized for these few rows, not the forward's N: far fewer GEMMs and float64 copies
    const int64_t step = std::max<int64_t>(tile_codes, kFullRowBytes / (8 * (full_rows.size(0) + D)));
    for (int64_t first_code = 0; first_code < K; first_code += step) {
      const int64_t codes = std::min(step, K - first_code);
      const at::Tensor tile = codebook.narrow(0, first_code, codes).to(at::kDouble);
      const at::Tensor logits = exact_scores(at::mm(z_rows, tile.t()), tile, scores.metric);
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
