// IBQ quantizer: schemas, argument checks and the tiling driver, the one entry point of the op
// on every device. The driver runs the GEMMs (ATen: BLAS on CPU, cuBLAS on CUDA) and calls the
// device's epilogue kernels (ibq_cpu.cpp, ibq_cuda.cu) on each logits slab. The passes, the
// entropy gradient and the GEMM count are derived in docs/ibq.md.
#include "ibq/ibq.h"
#include "ibq/ibq_exact.h"
#include "ibq/ibq_metric.h"
#include "ibq/ibq_operands.h"

#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/dispatch.h"

namespace dcae_ext {
namespace {

constexpr int64_t kMinCodesPerTile = 64;
constexpr int64_t kSlabsAtOnce = 3;  // logits, and probabilities or d(logits), and G C^T

// Budget for the slabs. CPU: ~64 MB in all (~2700 codes per tile at N = 2048): few tiles, so
// few thread-pool round trips (GEMM, epilogue, GEMM, each a barrier). 8 MB slabs (cache-resident)
// were 10-15% faster on an idle 2-core machine but 2-5x slower when other processes compete for
// the cores, where every barrier can wait a scheduler time slice.
int64_t workspace_bytes(const at::Tensor& z) { return z.is_cuda() ? int64_t(256) << 20 : int64_t(64) << 20; }

void scan_tile(const IbqScanArgs& args) {
#ifdef DCAE_EXT_WITH_CUDA
  if (args.logits.is_cuda()) return ibq_scan_cuda(args);
#endif
  ibq_scan_cpu(args);
}

void entropy_tile(const IbqEntropyArgs& args) {
#ifdef DCAE_EXT_WITH_CUDA
  if (args.logits.is_cuda()) return ibq_entropy_cuda(args);
#endif
  ibq_entropy_cpu(args);
}

void grad_tile(const IbqGradArgs& args) {
#ifdef DCAE_EXT_WITH_CUDA
  if (args.logits.is_cuda()) return ibq_grad_cuda(args);
#endif
  ibq_grad_cpu(args);
}

IbqMetric check_ibq_inputs(const at::Tensor& z, const at::Tensor& codebook, double temperature,
                           c10::optional<at::ScalarType> gemm_dtype, c10::string_view metric) {
  DCAE_CHECK_DIM(z, "z", 2);
  DCAE_CHECK_DIM(codebook, "codebook", 2);
  DCAE_CHECK_FLOATING(z, "z");
  DCAE_CHECK_FLOATING(codebook, "codebook");
  DCAE_CHECK_SAME_DTYPE(z, "z", codebook, "codebook");
  DCAE_CHECK_SAME_DEVICE(z, "z", codebook, "codebook");
  DCAE_CHECK_ARG(z.size(1) == codebook.size(1), "codebook", "dimension ", codebook.size(1),
                 " does not match z's last dimension ", z.size(1));
  DCAE_CHECK_ARG(codebook.size(0) >= 1, "codebook", "needs at least one code");
  DCAE_CHECK_ARG(z.size(1) >= 1, "z", "needs a last dimension D >= 1, got shape ", z.sizes());
  DCAE_CHECK_ARG(std::isfinite(temperature) && temperature > 0, "temperature",
                 "expected a finite number > 0, got ", temperature);
  check_gemm_dtype(z, gemm_dtype);
  return parse_metric(metric);
}

void check_ibq_args(const at::Tensor& z, const at::Tensor& codebook, double temperature,
                    c10::optional<at::ScalarType> gemm_dtype, c10::string_view metric) {
  check_ibq_inputs(z, codebook, temperature, gemm_dtype, metric);
}

// The saved tensors and the incoming gradients come from the forward and autograd; a direct
// torch.ops caller can pass anything, so each is checked like the forward's inputs.
void check_ibq_backward_inputs(const c10::optional<at::Tensor>& grad_z_q, const c10::optional<at::Tensor>& grad_entropy,
                               const at::Tensor& z, const at::Tensor& codebook, const at::Tensor& idx,
                               const at::Tensor& row_stats, const at::Tensor& soft_codes,
                               const at::Tensor& code_coef) {
  const int64_t N = z.size(0), D = z.size(1), K = codebook.size(0);
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  DCAE_CHECK_SAME_DEVICE(z, "z", idx, "idx");
  DCAE_CHECK_ARG(idx.dim() == 1 && idx.size(0) == N && idx.scalar_type() == at::kLong, "idx",
                 "expected an int64 tensor of shape (", N, "), got ", idx.sizes(), " ", idx.scalar_type());
  DCAE_CHECK_SAME_DEVICE(z, "z", row_stats, "row_stats");
  DCAE_CHECK_ARG(row_stats.dim() == 2 && row_stats.size(0) == N && row_stats.size(1) == kRowStatCount &&
                     row_stats.scalar_type() == acc_dtype,
                 "row_stats", "expected (", N, ", ", kRowStatCount, ") ", acc_dtype, ", got ", row_stats.sizes(), " ",
                 row_stats.scalar_type());
  if (grad_z_q.has_value() && grad_z_q->defined()) {
    DCAE_CHECK_SAME_DEVICE(z, "z", *grad_z_q, "grad_z_q");
    DCAE_CHECK_SAME_DTYPE(z, "z", *grad_z_q, "grad_z_q");
    DCAE_CHECK_ARG(grad_z_q->sizes() == z.sizes(), "grad_z_q", "expected shape ", z.sizes(), ", got ",
                   grad_z_q->sizes());
    DCAE_CHECK_SAME_DEVICE(z, "z", soft_codes, "soft_codes");
    DCAE_CHECK_ARG(soft_codes.dim() == 2 && soft_codes.size(0) == N && soft_codes.size(1) == D &&
                       soft_codes.scalar_type() == acc_dtype,
                   "soft_codes", "expected (", N, ", ", D, ") ", acc_dtype, ", got ", soft_codes.sizes(), " ",
                   soft_codes.scalar_type());
  }
  if (grad_entropy.has_value() && grad_entropy->defined()) {
    DCAE_CHECK_SAME_DEVICE(z, "z", *grad_entropy, "grad_entropy");
    DCAE_CHECK_FLOATING(*grad_entropy, "grad_entropy");
    DCAE_CHECK_ARG(grad_entropy->numel() == 1, "grad_entropy", "expected one element, got ",
                   grad_entropy->sizes());
    DCAE_CHECK_SAME_DEVICE(z, "z", code_coef, "code_coef");
    DCAE_CHECK_ARG(code_coef.dim() == 1 && code_coef.size(0) == K && code_coef.scalar_type() == acc_dtype,
                   "code_coef", "expected (", K, ") ", acc_dtype, " (forward run with entropy), got ",
                   code_coef.sizes(), " ", code_coef.scalar_type());
  }
}

// Codes per tile: as many as keep kSlabsAtOnce slabs of all rows within the budget, a multiple
// of kMinCodesPerTile and at least that; `requested` > 0 overrides (the tests use small tiles).
int64_t pick_codes_per_tile(int64_t rows, int64_t codes, int64_t requested, int64_t budget_bytes,
                            int64_t acc_bytes) {
  if (requested > 0) return std::min(requested, codes);
  const int64_t bytes_per_code = std::max<int64_t>(rows, 1) * kSlabsAtOnce * acc_bytes;
  const int64_t fit = std::max<int64_t>(budget_bytes / bytes_per_code, kMinCodesPerTile);
  if (fit >= codes) return codes;
  return std::max<int64_t>(kMinCodesPerTile, fit / kMinCodesPerTile * kMinCodesPerTile);
}

// The first rows * cols elements of a flat buffer, as a contiguous (rows, cols) matrix.
at::Tensor slab_view(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// out = a @ b, with `out` in the accumulation dtype and a, b in the GEMM dtype.
void gemm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
    at::mm_out(out, a, b, out.scalar_type());
  }
}

// acc += a @ b.
void gemm_accumulate(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == acc.scalar_type()) {
    acc.addmm_(a, b);
  } else {
    at::addmm_out(acc, acc, a, b, acc.scalar_type());
  }
}

// b_k = log(pbar_k + eps) + pbar_k / (pbar_k + eps), the derivative of -H_eps(pbar).
at::Tensor code_coefficients(const at::Tensor& mean_probs) {
  return (mean_probs + kIbqEntropyEps).log() + mean_probs / (mean_probs + kIbqEntropyEps);
}

using IbqForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Forward: returns (z_q (N, D), idx (N) int64, entropy () in z's dtype,
//                   row_stats (N, 4), soft_codes (N or 0, D) = s @ C, code_coef (K or 0) = b_k,
//                   gemm_plan (kPlanSize) CPU int64: the operands, for the backward).
// `search`, when given, receives the (N) int8 IbqRowSearch of every row (all kCertified
// where nothing is re-ranked).
IbqForwardResult forward_impl(const at::Tensor& z, const at::Tensor& codebook, double temperature, bool quantize,
                              bool entropy, int64_t codes_per_tile, c10::optional<at::ScalarType> gemm_dtype,
                              c10::string_view metric_name, bool exact_index, at::Tensor* search) {
  const IbqMetric metric = check_ibq_inputs(z, codebook, temperature, gemm_dtype, metric_name);
  const c10::DeviceGuard device_guard(z.device());
  const int64_t N = z.size(0), D = z.size(1), K = codebook.size(0);
  const IbqOperands operands = ibq_operands(z, codebook, gemm_dtype);
  const at::ScalarType gemm = operands.gemm_dtype;
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  const auto acc_options = z.options().dtype(acc_dtype);
  // Quantize alone: s @ C is accumulated online during the single pass (flash-attention style);
  // with the entropy, during the second pass, once the row statistics are known.
  const bool soft_codes_in_scan = quantize && !entropy;

  at::Tensor idx = at::zeros({N}, z.options().dtype(at::kLong));
  at::Tensor row_stats = at::zeros({N, kRowStatCount}, acc_options);
  at::Tensor soft_codes = at::zeros({quantize ? N : 0, D}, acc_options);
  at::Tensor code_coef = at::zeros({entropy ? K : 0}, acc_options);
  at::Tensor loss = at::zeros({}, acc_options);
  if (search != nullptr) *search = at::zeros({N}, z.options().dtype(at::kChar));

  if (N > 0) {
    const IbqScores scores = ibq_scores(z, codebook, metric);
    const at::Tensor z_gemm = scores.z_operand(z, operands);
    // the codes as GEMM operands: the scores' right operand (dot, l2) and the values of z_q (s @ C)
    const at::Tensor codebook_gemm =
        metric != IbqMetric::kCosine || quantize ? operands.prepare(codebook) : at::Tensor();
    const int64_t tile_codes_max = pick_codes_per_tile(N, K, codes_per_tile, workspace_bytes(z),
                                                       c10::elementSize(acc_dtype));
    at::Tensor logits_buffer = at::empty({N * tile_codes_max}, acc_options);
    at::Tensor probs_buffer;  // probabilities in the GEMM dtype, where they cannot overwrite the logits
    if ((soft_codes_in_scan && gemm != acc_dtype) || (quantize && entropy)) {
      probs_buffer = at::empty({N * tile_codes_max}, z.options().dtype(gemm));
    }
    at::Tensor row_max = at::full({N}, -std::numeric_limits<double>::infinity(), acc_options);
    at::Tensor sum_exp = at::zeros({N}, acc_options);
    at::Tensor sum_exp_scaled = entropy ? at::zeros({N}, acc_options) : at::Tensor();
    // The exact index (rounded operands, or asked for): the candidates of the re-rank
    // (IbqScanArgs). An entropy-only call returns no index, so it scans for none.
    const bool index_used = quantize || !entropy;
    const bool rerank = index_used && (operands.rounded() || (exact_index && acc_dtype != at::kDouble));
    const at::Tensor cand_value =
        rerank ? at::full({N, kIbqCandidates}, -std::numeric_limits<double>::infinity(), acc_options) : at::Tensor();
    const at::Tensor cand_code = rerank ? at::full({N, kIbqCandidates}, -1, idx.options()) : at::Tensor();
    // The scores of one tile into its slab: GEMM, then the metric's code terms.
    const auto score_tile = [&](int64_t first_code, int64_t tile_codes) {
      at::Tensor slab = slab_view(logits_buffer, N, tile_codes);
      gemm_into(slab, z_gemm, scores.code_tile(codebook, codebook_gemm, operands, first_code, tile_codes).t());
      scores.finish_scores(slab, first_code);
      return slab;
    };

    // Pass 1: online max / argmax / sums over the tiles.
    for (int64_t first_code = 0; first_code < K; first_code += tile_codes_max) {
      const int64_t tile_codes = std::min(tile_codes_max, K - first_code);
      IbqScanArgs args;
      args.logits = score_tile(first_code, tile_codes);
      args.code_offset = first_code;
      args.inv_temperature = 1.0 / temperature;
      args.row_max = row_max;
      args.sum_exp = sum_exp;
      args.sum_exp_t = sum_exp_scaled;
      args.idx = idx;
      args.cand_value = cand_value;
      args.cand_code = cand_code;
      if (soft_codes_in_scan) {
        args.probs = probs_buffer.defined() ? slab_view(probs_buffer, N, tile_codes) : args.logits;
        args.soft = soft_codes;
      }
      scan_tile(args);
      if (soft_codes_in_scan) {  // soft was rescaled by the scan
        gemm_accumulate(soft_codes, args.probs, codebook_gemm.narrow(0, first_code, tile_codes));
      }
    }
    row_stats.select(1, kRowMax).copy_(row_max);
    row_stats.select(1, kRowLse).copy_(row_max + sum_exp.log());
    if (soft_codes_in_scan) soft_codes.div_(sum_exp.unsqueeze(1));
    if (rerank) {
      at::Tensor rows =
          ibq_exact_rerank(z, codebook, operands, scores, tile_codes_max, row_max, cand_value, cand_code, idx);
      if (search != nullptr) *search = rows;
    }

    if (entropy) {
      // Pass 2: p = softmax(l / T) per slab; its column means are complete pbar values.
      row_stats.select(1, kRowLogSumT).copy_(sum_exp_scaled.log());
      at::Tensor row_entropy = at::zeros({N}, acc_options);
      at::Tensor row_dot_coef = at::zeros({N}, acc_options);  // r_n = sum_k p_nk b_k
      at::Tensor mean_probs = at::empty({K}, acc_options);
      for (int64_t first_code = 0; first_code < K; first_code += tile_codes_max) {
        const int64_t tile_codes = std::min(tile_codes_max, K - first_code);
        IbqEntropyArgs args;
        args.logits = score_tile(first_code, tile_codes);
        args.inv_temperature = 1.0 / temperature;
        args.row_stats = row_stats;
        args.row_entropy = row_entropy;
        if (quantize) args.probs = slab_view(probs_buffer, N, tile_codes);
        entropy_tile(args);  // the slab now holds p
        at::Tensor mean_tile = mean_probs.narrow(0, first_code, tile_codes);
        at::sum_out(mean_tile, args.logits, {0});
        mean_tile.div_(static_cast<double>(N));
        row_dot_coef.addmv_(args.logits, code_coefficients(mean_tile));
        if (quantize) gemm_accumulate(soft_codes, args.probs, codebook_gemm.narrow(0, first_code, tile_codes));
      }
      const at::Tensor mean_entropy = -(mean_probs * (mean_probs + kIbqEntropyEps).log()).sum();
      loss = row_entropy.mean() - mean_entropy;
      row_stats.select(1, kRowEntropyCoef).copy_((row_entropy + row_dot_coef) / static_cast<double>(N));
      code_coef = code_coefficients(mean_probs);
    }
  }
  // A row whose softmax is undefined (a NaN or +inf score, or every score -inf) gets a NaN
  // z_q, as the straight-through hard - s + s of the reference does.
  at::Tensor z_q = codebook.index_select(0, idx);
  if (N > 0) {
    const at::Tensor undefined_rows = row_stats.select(1, kRowLse).isfinite().logical_not().unsqueeze(1);
    z_q.masked_fill_(undefined_rows, std::numeric_limits<double>::quiet_NaN());
  }
  return {z_q, idx, loss.to(z.scalar_type()), row_stats, soft_codes, code_coef, operands.to_plan()};
}

IbqForwardResult ibq_forward(const at::Tensor& z, const at::Tensor& codebook, double temperature, bool quantize,
                             bool entropy, int64_t codes_per_tile, c10::optional<at::ScalarType> gemm_dtype,
                             c10::string_view metric, bool exact_index) {
  return forward_impl(z, codebook, temperature, quantize, entropy, codes_per_tile, gemm_dtype, metric, exact_index,
                      nullptr);
}

// The nearest code alone and how each row found it (IbqRowSearch), for the tests.
std::tuple<at::Tensor, at::Tensor> ibq_nearest(const at::Tensor& z, const at::Tensor& codebook,
                                               c10::optional<at::ScalarType> gemm_dtype, int64_t codes_per_tile,
                                               c10::string_view metric, bool exact_index) {
  at::Tensor search;
  const IbqForwardResult result =
      forward_impl(z, codebook, 1.0, false, false, codes_per_tile, gemm_dtype, metric, exact_index, &search);
  return {std::get<1>(result), search};
}

// Backward: returns (grad_z (N, D), grad_codebook (K, D)). The GEMM operands are the forward's
// (gemm_plan), so the recomputed scores are the ones its row statistics were taken from.
std::tuple<at::Tensor, at::Tensor> ibq_backward(
    const c10::optional<at::Tensor>& grad_z_q, const c10::optional<at::Tensor>& grad_entropy, const at::Tensor& z,
    const at::Tensor& codebook, const at::Tensor& idx, const at::Tensor& row_stats, const at::Tensor& soft_codes,
    const at::Tensor& code_coef, const at::Tensor& gemm_plan, double temperature, int64_t codes_per_tile,
    c10::string_view metric_name) {
  const IbqMetric metric = check_ibq_inputs(z, codebook, temperature, c10::nullopt, metric_name);
  check_ibq_backward_inputs(grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft_codes, code_coef);
  const IbqOperands operands = IbqOperands::from_plan(gemm_plan, z);
  const c10::DeviceGuard device_guard(z.device());
  const IbqCublasSettingsGuard cublas_settings(operands, z.is_cuda());
  const int64_t N = z.size(0), D = z.size(1), K = codebook.size(0);
  const bool with_quantize_grad = grad_z_q.has_value() && grad_z_q->defined();
  const bool with_entropy_grad = grad_entropy.has_value() && grad_entropy->defined();
  const at::ScalarType gemm = operands.gemm_dtype;
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  const auto acc_options = z.options().dtype(acc_dtype);
  // the epilogue kernels read these two through raw pointers; a direct caller may pass views
  const at::Tensor row_stats_dense = row_stats.contiguous();
  const at::Tensor code_coef_dense = code_coef.contiguous();

  at::Tensor grad_z = at::zeros({N, D}, acc_options);
  at::Tensor grad_codebook = at::zeros({K, D}, acc_options);
  if (N > 0 && (with_quantize_grad || with_entropy_grad)) {
    const IbqScores scores = ibq_scores(z, codebook, metric);
    const at::Tensor z_gemm = scores.z_operand(z, operands);
    const at::Tensor codebook_gemm =
        metric != IbqMetric::kCosine || with_quantize_grad ? operands.prepare(codebook) : at::Tensor();
    // G as the GEMMs see it; D_n = G_n . (s_n @ C) once per row from the same G as g = G C^T,
    // so that sum_k dL_nk = 0 holds: nothing moves along the softmax-invariant direction.
    const at::Tensor grad_z_q_gemm = with_quantize_grad ? operands.prepare(*grad_z_q) : at::Tensor();
    const at::Tensor row_dot =
        with_quantize_grad ? (grad_z_q_gemm.to(acc_dtype) * soft_codes).sum(1) : at::Tensor();
    const at::Tensor grad_entropy_acc = with_entropy_grad ? grad_entropy->to(acc_dtype).reshape({}) : at::Tensor();
    const int64_t tile_codes_max = pick_codes_per_tile(N, K, codes_per_tile, workspace_bytes(z),
                                                       c10::elementSize(acc_dtype));
    at::Tensor logits_buffer = at::empty({N * tile_codes_max}, acc_options);
    at::Tensor grad_logits_q_buffer = with_quantize_grad ? at::empty({N * tile_codes_max}, acc_options) : at::Tensor();
    // d(logits) in the GEMM dtype; in the accumulation dtype it overwrites the logits in place.
    at::Tensor grad_logits_buffer = gemm != acc_dtype ? at::empty({N * tile_codes_max}, z.options().dtype(gemm))
                                        : logits_buffer;
    for (int64_t first_code = 0; first_code < K; first_code += tile_codes_max) {
      const int64_t tile_codes = std::min(tile_codes_max, K - first_code);
      const at::Tensor tile = scores.code_tile(codebook, codebook_gemm, operands, first_code, tile_codes);
      IbqGradArgs args;
      args.logits = slab_view(logits_buffer, N, tile_codes);
      gemm_into(args.logits, z_gemm, tile.t());  // recomputed, never saved
      scores.finish_scores(args.logits, first_code);
      if (with_quantize_grad) {
        args.grad_logits_q = slab_view(grad_logits_q_buffer, N, tile_codes);
        // g = G C_t^T with the codes' values (z_q = C[idx])
        gemm_into(args.grad_logits_q, grad_z_q_gemm, codebook_gemm.narrow(0, first_code, tile_codes).t());
        args.row_dot = row_dot;
      }
      if (with_entropy_grad) {
        args.code_coef = code_coef_dense.narrow(0, first_code, tile_codes);
        args.grad_entropy = grad_entropy_acc;
      }
      args.row_stats = row_stats_dense;
      args.inv_temperature = 1.0 / temperature;
      args.rows_total = N;
      args.out = slab_view(grad_logits_buffer, N, tile_codes);
      grad_tile(args);
      gemm_accumulate(grad_z, args.out, tile);  // dz += dL C_t (the scores' right operand)
      at::Tensor grad_tile_codes = grad_codebook.narrow(0, first_code, tile_codes);
      gemm_into(grad_tile_codes, args.out.t(), z_gemm);  // dC_t = dL^T z (the scores' left operand)
      scores.chain_code_grad(grad_tile_codes, args.out, codebook, first_code);
    }
    scores.chain_row_grad(grad_z);
    if (with_quantize_grad) grad_codebook.index_add_(0, idx, grad_z_q->to(acc_dtype));  // the straight-through part
  }
  return {grad_z.to(z.scalar_type()), grad_codebook.to(codebook.scalar_type())};
}

}  // namespace
}  // namespace dcae_ext

TORCH_LIBRARY_FRAGMENT(dcae_ext, m) {
  // The argument checks alone, for the Python side when it runs the reference instead.
  m.def("_check_ibq_args(Tensor z, Tensor codebook, float temperature, ScalarType? gemm_dtype=None, "
        "str metric='dot') -> ()",
        &dcae_ext::check_ibq_args);
  m.def("ibq_forward(Tensor z, Tensor codebook, float temperature, bool quantize, bool entropy, "
        "int codes_per_tile=0, ScalarType? gemm_dtype=None, str metric='dot', bool exact_index=False) -> "
        "(Tensor z_q, Tensor idx, Tensor entropy, Tensor row_stats, Tensor soft_codes, Tensor code_coef, "
        "Tensor gemm_plan)");
  m.def("_ibq_backward(Tensor? grad_z_q, Tensor? grad_entropy, Tensor z, Tensor codebook, Tensor idx, "
        "Tensor row_stats, Tensor soft_codes, Tensor code_coef, Tensor gemm_plan, float temperature, "
        "int codes_per_tile=0, str metric='dot') -> (Tensor grad_z, Tensor grad_codebook)");
  m.def("_ibq_nearest(Tensor z, Tensor codebook, ScalarType? gemm_dtype=None, int codes_per_tile=0, "
        "str metric='dot', bool exact_index=False) -> (Tensor idx, Tensor search)");
}

TORCH_LIBRARY_IMPL(dcae_ext, CPU, m) {
  m.impl("ibq_forward", &dcae_ext::ibq_forward);
  m.impl("_ibq_backward", &dcae_ext::ibq_backward);
  m.impl("_ibq_nearest", &dcae_ext::ibq_nearest);
}

#ifdef DCAE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(dcae_ext, CUDA, m) {
  m.impl("ibq_forward", &dcae_ext::ibq_forward);
  m.impl("_ibq_backward", &dcae_ext::ibq_backward);
  m.impl("_ibq_nearest", &dcae_ext::ibq_nearest);
}
#endif
