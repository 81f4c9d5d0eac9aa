// IBQ quantiser: schemas, argument checks and the device-agnostic tiling driver.
//
// Tiling. The codebook is streamed in tiles of `kt` codes; each tile's logits for ALL N rows
// form one (N x kt) slab (accumulation dtype), produced by one ATen GEMM (BLAS on CPU, cuBLAS
// on CUDA: bf16/fp16 operands with float32 output there) and consumed by a fused per-device
// epilogue (ibq_cpu.cpp / ibq_cuda.cu). kt is chosen so the slabs (at most 3) fit the device's
// workspace budget, with at least kMinCodesPerTile codes: the workspace is
// O(max(budget, N * kMinCodesPerTile)) and no N x K tensor ever exists.
//
// Forward, quantize only (1 pass over the tiles, 2 GEMMs of 2NKD flops):
//   logits = z C_t^T; epilogue: online max / argmax (ties -> lowest k) / sum exp, and
//   P = exp(l - m_new); soft = soft * exp(m_old - m_new) [in the epilogue] + P C_t    (flash-attention style)
// Forward with entropy (2 passes, 3 GEMMs; entropy alone: 2): pass 1 as above without P C_t,
//   plus sum exp((l - m) / T). Pass 2 recomputes logits; epilogue writes p = softmax(l / T) over
//   the slab and s = softmax(l) beside it, accumulating per row H_n = -sum p log p (exact);
//   then pbar_t = column mean of p (complete: the slab holds every row),
//   b_t = log(pbar + eps) + pbar / (pbar + eps), row term r_n += p b_t (GEMV), soft += s C_t.
// Saved for backward, all O((N + K) D): idx, row stats (max, lse, log-sum at T, the entropy's
//   softmax-backward row term c_n = (H_n + r_n) / N), soft = s @ C (N x D),
//   b (K).
// Backward (1 pass, recomputes logits): logits = z C_t^T, g = G C_t^T, one fused d(logits)
//   dL = s (g - D_n) + (gE / T) p (h - c_n),  D_n = G_n . soft_n,  h = (a + b) / N,
//   a = -log p; then dz += dL C_t and dC_t = dL^T z; finally G is
//   scattered into the rows idx of dC. 4 GEMMs (3 without the quantize gradient).
// Total: quantize 6 GEMMs (the DESIGN floor), quantize + entropy 7, entropy alone 5.
#include "ibq/ibq.h"

#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/checks.h"

namespace dcae_ext {
namespace {

constexpr int64_t kMinCodesPerTile = 64;

at::ScalarType acc_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_ibq_inputs(const at::Tensor& z, const at::Tensor& codebook, double temperature) {
  DCAE_CHECK_DIM(z, "z", 2);
  DCAE_CHECK_DIM(codebook, "codebook", 2);
  DCAE_CHECK_FLOATING(z, "z");
  DCAE_CHECK_FLOATING(codebook, "codebook");
  DCAE_CHECK_SAME_DTYPE(z, "z", codebook, "codebook");
  DCAE_CHECK_SAME_DEVICE(z, "z", codebook, "codebook");
  DCAE_CHECK_ARG(z.size(1) == codebook.size(1), "codebook", "dimension ", codebook.size(1),
                 " does not match z's dimension ", z.size(1));
  DCAE_CHECK_ARG(codebook.size(0) >= 1, "codebook", "needs at least one code");
  DCAE_CHECK_ARG(z.size(1) >= 1, "z", "needs a last dimension D >= 1, got shape ", z.sizes());
  DCAE_CHECK_ARG(std::isfinite(temperature) && temperature > 0, "temperature",
                 "must be a finite number > 0, got ", temperature);
}

int64_t pick_codes_per_tile(int64_t rows, int64_t codes, int64_t requested, int64_t budget_bytes,
                            int64_t slab_bytes_per_element) {
  if (requested > 0) return std::min(requested, codes);
  const int64_t per_code = std::max<int64_t>(rows, 1) * slab_bytes_per_element;
  int64_t kt = std::max<int64_t>(budget_bytes / per_code, kMinCodesPerTile);
  if (kt >= codes) return codes;
  return std::max<int64_t>(kMinCodesPerTile, kt / kMinCodesPerTile * kMinCodesPerTile);
}

// The first rows * cols elements of a flat buffer, as a contiguous (rows, cols) matrix.
at::Tensor slab_view(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// out = a @ b, with `out` in the accumulation dtype and a, b in the compute dtype.
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

at::Tensor code_coefficients(const at::Tensor& mean_probs) {
  return (mean_probs + kIbqEntropyEps).log() + mean_probs / (mean_probs + kIbqEntropyEps);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ibq_forward_driver(
    const IbqEpilogues& epi, const at::Tensor& z, const at::Tensor& codebook, double temperature,
    bool quantize, bool entropy, int64_t codes_per_tile) {
  check_ibq_inputs(z, codebook, temperature);
  const int64_t N = z.size(0), D = z.size(1), K = codebook.size(0);
  const at::ScalarType acc = acc_dtype(z.scalar_type());
  const at::ScalarType compute = epi.compute_dtype(z.scalar_type());
  const auto acc_opts = z.options().dtype(acc);
  const bool flash = quantize && !entropy;  // s @ C accumulated online in pass 1

  at::Tensor idx = at::zeros({N}, z.options().dtype(at::kLong));
  at::Tensor row_stats = at::zeros({N, kRowStatCount}, acc_opts);
  at::Tensor soft = at::zeros({quantize ? N : 0, D}, acc_opts);
  at::Tensor code_coef = at::zeros({entropy ? K : 0}, acc_opts);
  at::Tensor loss = at::zeros({}, acc_opts);

  if (N > 0) {
    const at::Tensor zc = z.to(compute);
    const at::Tensor cc = codebook.to(compute);
    const int64_t elem = c10::elementSize(acc);
    const int64_t kt_max = pick_codes_per_tile(N, K, codes_per_tile, epi.workspace_bytes, 3 * elem);
    at::Tensor slab = at::empty({N * kt_max}, acc_opts);
    at::Tensor probs_buf;
    if ((flash && compute != acc) || (quantize && entropy)) {
      probs_buf = at::empty({N * kt_max}, z.options().dtype(compute));
    }
    at::Tensor row_max = at::full({N}, -std::numeric_limits<double>::infinity(), acc_opts);
    at::Tensor sum_exp = at::zeros({N}, acc_opts);
    at::Tensor sum_exp_t = entropy ? at::zeros({N}, acc_opts) : at::Tensor();

    for (int64_t k0 = 0; k0 < K; k0 += kt_max) {
      const int64_t kt = std::min(kt_max, K - k0);
      at::Tensor logits = slab_view(slab, N, kt);
      const at::Tensor tile = cc.narrow(0, k0, kt);
      gemm_into(logits, zc, tile.t());
      IbqScanArgs args;
      args.logits = logits;
      args.code_offset = k0;
      args.inv_temperature = 1.0 / temperature;
      args.row_max = row_max;
      args.sum_exp = sum_exp;
      args.sum_exp_t = sum_exp_t;
      args.idx = idx;
      if (flash) {
        args.probs = probs_buf.defined() ? slab_view(probs_buf, N, kt) : logits;
        args.soft = soft;
      }
      epi.scan(args);
      if (flash) gemm_accumulate(soft, args.probs, tile);  // soft was rescaled by the epilogue
    }
    row_stats.select(1, kRowMax).copy_(row_max);
    row_stats.select(1, kRowLse).copy_(row_max + sum_exp.log());
    if (flash) soft.div_(sum_exp.unsqueeze(1));

    if (entropy) {
      row_stats.select(1, kRowLogSumT).copy_(sum_exp_t.log());
      at::Tensor row_entropy = at::zeros({N}, acc_opts);
      at::Tensor row_dot_b = at::zeros({N}, acc_opts);
      at::Tensor mean_probs = at::empty({K}, acc_opts);
      for (int64_t k0 = 0; k0 < K; k0 += kt_max) {
        const int64_t kt = std::min(kt_max, K - k0);
        at::Tensor logits = slab_view(slab, N, kt);
        const at::Tensor tile = cc.narrow(0, k0, kt);
        gemm_into(logits, zc, tile.t());
        IbqEntropyArgs args;
        args.logits = logits;
        args.inv_temperature = 1.0 / temperature;
        args.row_stats = row_stats;
        args.row_entropy = row_entropy;
        if (quantize) args.probs = slab_view(probs_buf, N, kt);
        epi.entropy(args);  // logits now hold p = softmax(l / T)
        at::Tensor mean_tile = mean_probs.narrow(0, k0, kt);
        at::sum_out(mean_tile, logits, {0});
        mean_tile.div_(static_cast<double>(N));
        row_dot_b.addmv_(logits, code_coefficients(mean_tile));
        if (quantize) gemm_accumulate(soft, args.probs, tile);
      }
      const at::Tensor mean_entropy = -(mean_probs * (mean_probs + kIbqEntropyEps).log()).sum();
      loss = row_entropy.mean() - mean_entropy;
      row_stats.select(1, kRowEntropyCoef).copy_((row_entropy + row_dot_b) / static_cast<double>(N));
      code_coef = code_coefficients(mean_probs);
    }
  }
  // A row whose softmax is undefined (a NaN or +inf logit, or every logit -inf) gets a NaN
  // z_q, as the straight-through hard - s + s of the reference does.
  at::Tensor z_q = codebook.index_select(0, idx);
  if (N > 0) {
    const at::Tensor undefined_rows = row_stats.select(1, kRowLse).isfinite().logical_not().unsqueeze(1);
    z_q.masked_fill_(undefined_rows, std::numeric_limits<double>::quiet_NaN());
  }
  return {z_q, idx, loss.to(z.scalar_type()), row_stats, soft, code_coef};
}

std::tuple<at::Tensor, at::Tensor> ibq_backward_driver(
    const IbqEpilogues& epi, const c10::optional<at::Tensor>& grad_z_q,
    const c10::optional<at::Tensor>& grad_entropy, const at::Tensor& z, const at::Tensor& codebook,
    const at::Tensor& idx, const at::Tensor& row_stats, const at::Tensor& soft_codes,
    const at::Tensor& code_coef, double temperature, int64_t codes_per_tile) {
  check_ibq_inputs(z, codebook, temperature);
  const int64_t N = z.size(0), D = z.size(1), K = codebook.size(0);
  const bool has_q = grad_z_q.has_value() && grad_z_q->defined();
  const bool has_e = grad_entropy.has_value() && grad_entropy->defined();
  const at::ScalarType acc = acc_dtype(z.scalar_type());
  const at::ScalarType compute = epi.compute_dtype(z.scalar_type());
  const auto acc_opts = z.options().dtype(acc);
  // The saved tensors and the incoming gradients come from the forward and autograd; a direct
  // torch.ops caller can pass anything, so every one is checked like the forward's inputs.
  DCAE_CHECK_SAME_DEVICE(z, "z", idx, "idx");
  DCAE_CHECK_ARG(idx.dim() == 1 && idx.size(0) == N && idx.scalar_type() == at::kLong, "idx",
                 "expected an int64 tensor of shape (", N, "), got ", idx.sizes(), " ", idx.scalar_type());
  DCAE_CHECK_SAME_DEVICE(z, "z", row_stats, "row_stats");
  DCAE_CHECK_ARG(row_stats.dim() == 2 && row_stats.size(0) == N && row_stats.size(1) == kRowStatCount &&
                     row_stats.scalar_type() == acc, "row_stats", "expected (", N, ", ", kRowStatCount,
                 ") ", acc, ", got ", row_stats.sizes(), " ", row_stats.scalar_type());
  if (has_q) {
    DCAE_CHECK_SAME_DEVICE(z, "z", *grad_z_q, "grad_z_q");
    DCAE_CHECK_SAME_DTYPE(z, "z", *grad_z_q, "grad_z_q");
    DCAE_CHECK_ARG(grad_z_q->sizes() == z.sizes(), "grad_z_q", "expected shape ", z.sizes(), ", got ",
                   grad_z_q->sizes());
    DCAE_CHECK_SAME_DEVICE(z, "z", soft_codes, "soft_codes");
    DCAE_CHECK_ARG(soft_codes.dim() == 2 && soft_codes.size(0) == N && soft_codes.size(1) == D &&
                       soft_codes.scalar_type() == acc, "soft_codes", "expected (", N, ", ", D, ") ",
                   acc, ", got ", soft_codes.sizes(), " ", soft_codes.scalar_type());
  }
  if (has_e) {
    DCAE_CHECK_SAME_DEVICE(z, "z", *grad_entropy, "grad_entropy");
    DCAE_CHECK_FLOATING(*grad_entropy, "grad_entropy");
    DCAE_CHECK_ARG(grad_entropy->numel() == 1, "grad_entropy", "expected one element, got ",
                   grad_entropy->sizes());
    DCAE_CHECK_SAME_DEVICE(z, "z", code_coef, "code_coef");
    DCAE_CHECK_ARG(code_coef.dim() == 1 && code_coef.size(0) == K && code_coef.scalar_type() == acc,
                   "code_coef", "expected (", K, ") ", acc, " (forward run with entropy), got ",
                   code_coef.sizes(), " ", code_coef.scalar_type());
  }

  at::Tensor grad_z = at::zeros({N, D}, acc_opts);
  at::Tensor grad_c = at::zeros({K, D}, acc_opts);
  if (N > 0 && (has_q || has_e)) {
    const at::Tensor zc = z.to(compute);
    const at::Tensor cc = codebook.to(compute);
    const at::Tensor gc = has_q ? grad_z_q->to(compute) : at::Tensor();
    const at::Tensor row_dot = has_q ? (grad_z_q->to(acc) * soft_codes).sum(1) : at::Tensor();
    const at::Tensor ge = has_e ? grad_entropy->to(acc).reshape({}) : at::Tensor();
    const int64_t elem = c10::elementSize(acc);
    const int64_t kt_max = pick_codes_per_tile(N, K, codes_per_tile, epi.workspace_bytes, 3 * elem);
    at::Tensor slab = at::empty({N * kt_max}, acc_opts);
    at::Tensor grad_slab = has_q ? at::empty({N * kt_max}, acc_opts) : at::Tensor();
    at::Tensor out_buf = compute != acc ? at::empty({N * kt_max}, z.options().dtype(compute)) : slab;
    for (int64_t k0 = 0; k0 < K; k0 += kt_max) {
      const int64_t kt = std::min(kt_max, K - k0);
      const at::Tensor tile = cc.narrow(0, k0, kt);
      IbqGradArgs args;
      args.logits = slab_view(slab, N, kt);
      gemm_into(args.logits, zc, tile.t());
      if (has_q) {
        args.grad_logits_q = slab_view(grad_slab, N, kt);
        gemm_into(args.grad_logits_q, gc, tile.t());
        args.row_dot = row_dot;
      }
      if (has_e) {
        args.code_coef = code_coef.narrow(0, k0, kt);
        args.grad_entropy = ge;
      }
      args.row_stats = row_stats;
      args.inv_temperature = 1.0 / temperature;
      args.rows_total = N;
      args.out = slab_view(out_buf, N, kt);  // may alias logits: the epilogue is elementwise
      epi.grad(args);
      gemm_accumulate(grad_z, args.out, tile);
      gemm_into(grad_c.narrow(0, k0, kt), args.out.t(), zc);
    }
    if (has_q) grad_c.index_add_(0, idx, grad_z_q->to(acc));
  }
  return {grad_z.to(z.scalar_type()), grad_c.to(codebook.scalar_type())};
}

}  // namespace dcae_ext

TORCH_LIBRARY_FRAGMENT(dcae_ext, m) {
  m.def("ibq_forward(Tensor z, Tensor codebook, float temperature, bool quantize, bool entropy, "
        "int codes_per_tile=0) -> (Tensor z_q, Tensor idx, Tensor entropy, Tensor row_stats, "
        "Tensor soft_codes, Tensor code_coef)");
  m.def("_ibq_backward(Tensor? grad_z_q, Tensor? grad_entropy, Tensor z, Tensor codebook, Tensor idx, "
        "Tensor row_stats, Tensor soft_codes, Tensor code_coef, float temperature, "
        "int codes_per_tile=0) -> (Tensor grad_z, Tensor grad_codebook)");
}
