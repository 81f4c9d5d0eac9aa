// IBQ large-codebook quantizer (docs/ibq.md): the driver in ibq.cpp streams codebook tiles
// through ATen GEMMs and calls a fused per-device epilogue kernel on every logits tile
// (ibq_cpu.cpp, ibq_cuda.cu). This header declares those kernels and their arguments.
//
// A "slab" is a contiguous (rows x codes_in_tile) matrix: the logits z @ C_tile^T of every row
// against one codebook tile, always in the accumulation dtype (float32, float64 for float64).
// Per-row statistics are kept in the accumulation dtype too.
#pragma once

#include <ATen/ATen.h>

namespace dcae_ext {

// eps of the codebook-mean entropy H_eps(pbar) = -sum pbar log(pbar + eps); the per-row
// entropy is exact, -sum p log p.
constexpr double kIbqEntropyEps = 1e-5;

// Columns of the saved (N, 4) row statistics.
enum IbqRowStat : int64_t {
  kRowMax = 0,       // m_n      = max_k logits_nk
  kRowLse = 1,       // lse_n    = log sum_k exp(logits_nk)
  kRowLogSumT = 2,   // log sum_k exp((logits_nk - m_n) / T); p_nk = exp((l - m)/T - this)
  kRowEntropyCoef = 3,  // c_n = (H_n + sum_k p_nk b_k) / N, the softmax-backward row term of the entropy
  kRowStatCount = 4,
};

// Codes per row kept by the scan when the GEMMs round their operands (ibq_exact.cpp): the
// candidates of the exact re-rank.
constexpr int64_t kIbqCandidates = 16;

// Pass 1 (online over code tiles): running max m, argmax idx (torch.argmax order: a NaN logit
// wins, then ties -> lowest k; m becomes NaN), `sum_exp` = sum exp(l - m) and, when sum_exp_t
// is defined, sum exp((l - m) / T). When `probs` is defined it receives exp(l - m_new) (GEMM
// dtype; may alias `logits`) and the rows of `soft` (N, D) are rescaled by exp(m_old - m_new),
// for the flash-style accumulation of s @ C. When `cand_value` is defined, each row also keeps
// its kIbqCandidates largest logits so far, sorted by (value desc, code asc), NaN never
// entering; empty slots are (-inf, -1).
struct IbqScanArgs {
  at::Tensor logits;            // (N, kt) slab
  int64_t code_offset;          // first code of the tile
  double inv_temperature;
  at::Tensor row_max, sum_exp, sum_exp_t, idx;  // (N) state; sum_exp_t undefined: no entropy
  at::Tensor probs, soft;       // optional outputs
  at::Tensor cand_value, cand_code;  // optional (N, kIbqCandidates) state: accumulation dtype, int64
};

// Pass 2 of the entropy (lse and lse at T known): overwrites `logits` with p = softmax(l / T)
// of the tile, adds -sum p log p to row_entropy (log p = (l - m) / T - log-sum at T, exact),
// and writes s = softmax(l) into `probs` (GEMM dtype) when it is defined.
struct IbqEntropyArgs {
  at::Tensor logits;            // (N, kt) slab, replaced by p
  double inv_temperature;
  at::Tensor row_stats;         // (N, 4)
  at::Tensor row_entropy;       // (N) accumulator
  at::Tensor probs;             // optional (N, kt) GEMM dtype
};

// Backward, one tile: d(logits) = s (g - D_n) [if grad_logits_q defined]
//                               + (gE / T) p (h - c_n) [if grad_entropy defined],
// h_nk = (b_k - log p_nk) / N. Written to `out` (GEMM dtype).
struct IbqGradArgs {
  at::Tensor logits;            // (N, kt) slab
  at::Tensor grad_logits_q;     // (N, kt) slab g = G @ C_tile^T, or undefined
  at::Tensor row_stats;         // (N, 4)
  at::Tensor row_dot;           // (N) D_n = G_n . (s_n @ C), with grad_logits_q
  at::Tensor code_coef;         // (kt) b_k of the tile, with grad_entropy
  at::Tensor grad_entropy;      // 0-dim accumulation-dtype tensor on the device, or undefined
  double inv_temperature;
  int64_t rows_total;           // N of the mean over rows
  at::Tensor out;               // (N, kt) GEMM dtype
};

// The epilogue kernels, one launcher per pass and device. On CPU the slabs are in the
// accumulation dtype; on CUDA `probs` / `out` are in the GEMM operand dtype (the input's).
void ibq_scan_cpu(const IbqScanArgs& args);
void ibq_entropy_cpu(const IbqEntropyArgs& args);
void ibq_grad_cpu(const IbqGradArgs& args);
#ifdef DCAE_EXT_WITH_CUDA
void ibq_scan_cuda(const IbqScanArgs& args);
void ibq_entropy_cuda(const IbqEntropyArgs& args);
void ibq_grad_cuda(const IbqGradArgs& args);
#endif

}  // namespace dcae_ext
