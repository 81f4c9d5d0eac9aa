// The exact nearest code under rounded GEMM operands, or wherever the caller asks for the
// precision-independent index (docs/ibq.md, "Exact index with half-precision GEMMs" and "One
// index on every path"): the re-rank that makes the argmax of the computed scores the argmax
// of the exact ones (float64), ties to the lowest code.
#pragma once

#include <ATen/ATen.h>

#include "ibq/ibq.h"
#include "ibq/ibq_metric.h"
#include "ibq/ibq_operands.h"

namespace dcae_ext {

// Per-row outcome of the re-rank (int8): the argmax of the computed scores was certified, or
// re-ranked among the kIbqCandidates kept codes, or recomputed over the whole codebook in float64.
enum IbqRowSearch : int8_t { kCertified = 0, kCandidates = 1, kFullRow = 2 };

// After pass 1: overwrites idx with the exact argmax of the metric's scores (ties -> lowest
// code) and returns the (N) int8 IbqRowSearch of each row. row_max and the candidates come from
// the scan; tile_codes bounds the float64 slabs of the full-row fallback. Warns once per process
// when a call sends more than kIbqFullRowWarnShare of its rows to the full-row fallback.
at::Tensor ibq_exact_rerank(const at::Tensor& z, const at::Tensor& codebook, const IbqOperands& operands,
                            const IbqScores& scores, int64_t tile_codes, const at::Tensor& row_max,
                            const at::Tensor& cand_value, const at::Tensor& cand_code, at::Tensor& idx);

// The share of a call's rows (and their least count) above which the full-row fallback warns.
constexpr double kIbqFullRowWarnShare = 0.05;
constexpr int64_t kIbqFullRowWarnRows = 16;

}  // namespace dcae_ext
