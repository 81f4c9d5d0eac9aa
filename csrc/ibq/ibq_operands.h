// Which operands the IBQ driver feeds its GEMMs (docs/ibq.md, "Exact index with half-precision
// GEMMs"): z's dtype, bf16 / fp16 operands (`gemm_dtype`; emulated on CPU), or float32 operands
// that cuBLAS rounds to TF32. The forward decides once and hands its decision to the backward
// as a small CPU tensor (the "gemm plan"), so the backward recomputes the forward's logits
// without a host sync and whatever the matmul flags say by then.
#pragma once

#include <ATen/ATen.h>

namespace dcae_ext {

// Entries of the gemm plan (a CPU int64 tensor).
enum IbqPlanEntry : int64_t {
  kPlanGemmDtype = 0,        // at::ScalarType of the operand tensors
  kPlanRoundedThrough = 1,   // CPU emulation: the dtype rounded through, or -1
  kPlanCudaFloat32 = 2,      // CUDA float32 operands: 0 exact, 1 TF32, 2 bf16 (cuBLAS's rounding)
  kPlanSize = 3,
};

// How the GEMMs see z and the codebook. unit_roundoff > 0: the logits carry an error the
// re-rank must bound (bf16 / fp16 operands, or TF32 in cuBLAS).
struct IbqOperands {
  at::ScalarType gemm_dtype;  // dtype of the operand tensors
  at::ScalarType rounded_through = at::ScalarType::Undefined;  // CPU emulation: round to this, back to gemm_dtype
  double unit_roundoff = 0;   // relative error of one operand element
  double tiny = 0;            // absolute error of one element near underflow (flush to zero included)
  int64_t cuda_float32 = 0;   // kPlanCudaFloat32: cuBLAS's rounding of float32 operands

  bool rounded() const { return unit_roundoff > 0; }
  at::Tensor prepare(const at::Tensor& x) const;
  // (relative, absolute) error of one operand element for values computed by the driver (the
  // cosine's normalised rows and codes), which the operand dtype need not hold exactly.
  std::pair<double, double> rounding_of_new_values() const;

  at::Tensor to_plan() const;
  // The operands of a plan made by to_plan; a ValueError naming `gemm_plan` for anything else.
  static IbqOperands from_plan(const at::Tensor& plan, const at::Tensor& z);
};

// gemm_dtype: None, float32 (both: z's dtype, TF32 where torch allows it on CUDA), bfloat16 or
// float16 (z must be float32). Raises a ValueError naming gemm_dtype otherwise.
void check_gemm_dtype(const at::Tensor& z, c10::optional<at::ScalarType> gemm_dtype);

// The operands for z and codebook on their device. A half gemm_dtype falls back to exact
// float32 operands when an input is not finite or beyond the dtype's range (one host sync).
IbqOperands ibq_operands(const at::Tensor& z, const at::Tensor& codebook, c10::optional<at::ScalarType> gemm_dtype);

// For the backward on CUDA: while alive, cuBLAS rounds float32 operands as the plan's forward
// saw it do (TF32 or not) and accepts fp16 operands with float32 outputs. It changes torch's
// global matmul settings only where they differ from the forward's, and restores them.
class IbqCublasSettingsGuard {
 public:
  IbqCublasSettingsGuard(const IbqOperands& operands, bool cuda);
  ~IbqCublasSettingsGuard();
  IbqCublasSettingsGuard(const IbqCublasSettingsGuard&) = delete;
  IbqCublasSettingsGuard& operator=(const IbqCublasSettingsGuard&) = delete;

 private:
  bool restore_float32_ = false, restore_fp16_accumulation_ = false;
  int64_t saved_float32_ = 0;
};

}  // namespace dcae_ext
