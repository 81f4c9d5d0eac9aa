// The exact nearest code under rounded GEMM operands (docs/ibq.md, "Exact index with
// half-precision GEMMs"): which operands the IBQ driver feeds its GEMMs, and the re-rank that
// makes the argmax of the rounded logits exact again.
#pragma once

#include <ATen/ATen.h>

#include "ibq/ibq.h"

namespace dcae_ext {

// How the GEMMs see z and the codebook. unit_roundoff > 0: the logits carry an error the
// re-rank must bound (bf16 / fp16 operands, or TF32 in cuBLAS).
struct IbqOperands {
  at::ScalarType gemm_dtype;  // dtype of the operand tensors
  at::ScalarType rounded_through = at::ScalarType::Undefined;  // CPU emulation: round to this, back to gemm_dtype
  double unit_roundoff = 0;   // relative error of one operand element
  double tiny = 0;            // absolute error of one element near underflow (flush to zero included)

  bool rounded() const { return unit_roundoff > 0; }
  at::Tensor prepare(const at::Tensor& x) const;
};

// gemm_dtype: None, float32 (both: z's dtype, TF32 where torch allows it on CUDA), bfloat16 or
// float16 (z must be float32). Raises a ValueError naming gemm_dtype otherwise.
void check_gemm_dtype(const at::Tensor& z, c10::optional<at::ScalarType> gemm_dtype);

// The operands for z and codebook on their device. A half gemm_dtype falls back to exact
// float32 operands when an input is not finite or beyond the dtype's range (one host sync).
IbqOperands ibq_operands(const at::Tensor& z, const at::Tensor& codebook, c10::optional<at::ScalarType> gemm_dtype);

// Per-row outcome of the re-rank (int8): the rounded argmax was certified, or re-ranked among
// the kIbqCandidates kept codes, or recomputed over the whole codebook in float64.
enum IbqRowSearch : int8_t { kCertified = 0, kCandidates = 1, kFullRow = 2 };

// After pass 1 on rounded logits: overwrites idx with the exact argmax (ties -> lowest code)
// and returns the (N) int8 IbqRowSearch of each row. row_max and the candidates come from the
// scan; tile_codes bounds the float64 slabs of the full-row fallback.
at::Tensor ibq_exact_rerank(const at::Tensor& z, const at::Tensor& codebook, const IbqOperands& operands,
                            int64_t tile_codes, const at::Tensor& row_max, const at::Tensor& cand_value,
                            const at::Tensor& cand_code, at::Tensor& idx);

}  // namespace dcae_ext
