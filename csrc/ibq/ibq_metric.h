// The score the IBQ driver ranks codes by (docs/ibq.md, "Distance metrics"): the dot product,
// the L2 distance as z.c - |c|^2/2, or the cosine similarity. Everything here is ATen work on
// the logits slabs and on O((N + K) D) tensors, so the per-device epilogue kernels see a slab
// of scores and do not know the metric.
#pragma once

#include <ATen/ATen.h>

#include <c10/util/string_view.h>

#include "ibq/ibq_operands.h"

namespace dcae_ext {

enum class IbqMetric { kDot, kL2, kCosine };

// eps of the cosine's normalisation, x / max(|x|, eps): torch.nn.functional.normalize's.
constexpr double kIbqCosineEps = 1e-12;

// "dot", "l2" or "cosine"; a ValueError naming `metric` otherwise.
IbqMetric parse_metric(c10::string_view metric);

// One call's per-row and per-code terms, computed once from z (N, D) and codebook (K, D) in the
// accumulation dtype, and the GEMM operands built from them.
//   dot:    score = z . c
//   l2:     score = z . c + code_bias,       code_bias_k = -|c_k|^2 / 2
//   cosine: score = (z r_z) . (c r_c),       r = 1 / max(|x|, eps), per row and per code
struct IbqScores {
  IbqMetric metric = IbqMetric::kDot;
  at::Tensor code_norm;   // (K) |c_k|: l2, cosine
  at::Tensor code_bias;   // (K) l2
  at::Tensor code_scale;  // (K) cosine: r_c
  at::Tensor row_norm;    // (N) cosine: |z_n|
  at::Tensor row_scale;   // (N) cosine: r_z
  at::Tensor unit_rows;   // (N, D) cosine: z r_z in the accumulation dtype

  // The z operand of the score GEMMs (cosine: the normalised rows), prepared for the operands.
  at::Tensor z_operand(const at::Tensor& z, const IbqOperands& operands) const;
  // The codes [first, first + count) as the right operand of the score GEMM: a slice of
  // `codebook_gemm` (dot, l2; may be undefined for cosine), or for cosine those codes
  // normalised (a tile-sized copy, never one of the whole codebook).
  at::Tensor code_tile(const at::Tensor& codebook, const at::Tensor& codebook_gemm, const IbqOperands& operands,
                       int64_t first, int64_t count) const;
  // slab (N, count) of z_operand @ code_tile^T -> the scores (l2 adds the code bias).
  void finish_scores(at::Tensor& slab, int64_t first) const;
  // grad_tile (count, D) = d(loss)/d(code_tile) -> d(loss)/d(codes [first, first + count)):
  // l2 subtracts colsum_n dL_nk c_k (dL: the slab of d(scores)); cosine applies the Jacobian of
  // the normalisation. dot: unchanged.
  void chain_code_grad(at::Tensor grad_tile, const at::Tensor& grad_scores, const at::Tensor& codebook,
                       int64_t first) const;
  // grad_z (N, D) = d(loss)/d(z_operand) -> d(loss)/dz (cosine: the normalisation's Jacobian).
  void chain_row_grad(at::Tensor& grad_z) const;
};

IbqScores ibq_scores(const at::Tensor& z, const at::Tensor& codebook, IbqMetric metric);

}  // namespace dcae_ext
