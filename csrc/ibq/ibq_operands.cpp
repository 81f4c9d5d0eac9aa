// The GEMM operands of the IBQ driver and the plan that carries them from forward to backward
// (ibq_operands.h; docs/ibq.md, "Exact index with half-precision GEMMs").
#include "ibq/ibq_operands.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/dispatch.h"

namespace dcae_ext {
namespace {

constexpr double kFloat32Min = std::numeric_limits<float>::min();  // smallest normal

struct HalfFormat {
  double unit_roundoff, smallest_normal, largest;
};

HalfFormat half_format(at::ScalarType dtype) {
  if (dtype == at::kHalf) return {0x1p-11, 0x1p-14, 65504.0};
  return {0x1p-8, 0x1p-126, 0x1.FEp127};  // bfloat16
}

bool is_half(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

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
// 2^-10), bf16 (8 bits), or none. As a kPlanCudaFloat32 code: 0 none, 1 TF32, 2 bf16.
int64_t cublas_float32_rounding() {
  const at::Float32Precision precision =
      at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
  if (precision == at::Float32Precision::BF16) return 2;
  return precision == at::Float32Precision::TF32 ? 1 : 0;
}

double cublas_float32_roundoff(int64_t rounding) {
  return rounding == 2 ? 0x1p-8 : (rounding == 1 ? 0x1p-10 : 0.0);
}

// cuBLAS refuses half operands with float32 output under allow_fp16_accumulation.
bool fp16_gemms_accumulate_in_fp16() { return at::globalContext().allowFP16AccumulationCuBLAS(); }

IbqOperands float32_on_cuda() {
  const int64_t rounding = cublas_float32_rounding();
  IbqOperands operands{at::kFloat};
  if (rounding > 0) {
    operands.unit_roundoff = cublas_float32_roundoff(rounding);
    operands.tiny = kFloat32Min;
    operands.cuda_float32 = rounding;
  }
  return operands;
}

}  // namespace

at::Tensor IbqOperands::prepare(const at::Tensor& x) const {
  if (rounded_through != at::ScalarType::Undefined) return x.to(rounded_through).to(gemm_dtype);
  return x.to(gemm_dtype);
}

std::pair<double, double> IbqOperands::rounding_of_new_values() const {
  if (gemm_dtype == at::kFloat && cuda_float32 > 0) {
    return {std::max(unit_roundoff, cublas_float32_roundoff(cuda_float32)), std::max(tiny, kFloat32Min)};
  }
  if (!is_half(gemm_dtype)) return {unit_roundoff, tiny};
  const HalfFormat format = half_format(gemm_dtype);
  return {std::max(unit_roundoff, format.unit_roundoff), std::max(tiny, format.smallest_normal)};
}

at::Tensor IbqOperands::to_plan() const {
  const int64_t through = rounded_through == at::ScalarType::Undefined ? -1 : static_cast<int64_t>(rounded_through);
  return at::tensor({static_cast<int64_t>(gemm_dtype), through, cuda_float32}, at::kLong);
}

IbqOperands IbqOperands::from_plan(const at::Tensor& plan, const at::Tensor& z) {
  DCAE_CHECK_ARG(plan.device().is_cpu() && plan.scalar_type() == at::kLong && plan.dim() == 1 &&
                     plan.size(0) == kPlanSize,
                 "gemm_plan", "expected the CPU int64 tensor of ", kPlanSize, " entries that ibq_forward returns, got ",
                 plan.sizes(), " ", plan.scalar_type(), " on ", plan.device());
  const at::Tensor values = plan.contiguous();
  const int64_t* entry = values.data_ptr<int64_t>();
  const at::ScalarType acc_dtype = accumulation_dtype(z.scalar_type());
  const auto gemm = static_cast<at::ScalarType>(entry[kPlanGemmDtype]);
  const bool gemm_ok = entry[kPlanGemmDtype] == static_cast<int64_t>(z.scalar_type()) ||
                       entry[kPlanGemmDtype] == static_cast<int64_t>(acc_dtype) ||
                       (z.scalar_type() == at::kFloat && z.is_cuda() &&
                        (entry[kPlanGemmDtype] == static_cast<int64_t>(at::kHalf) ||
                         entry[kPlanGemmDtype] == static_cast<int64_t>(at::kBFloat16)));
  const int64_t through = entry[kPlanRoundedThrough];
  const bool through_ok = through == -1 || (!z.is_cuda() && z.scalar_type() == at::kFloat &&
                                            (through == static_cast<int64_t>(at::kHalf) ||
                                             through == static_cast<int64_t>(at::kBFloat16)));
  const int64_t cuda_float32 = entry[kPlanCudaFloat32];
  const bool float32_ok = cuda_float32 == 0 || (cuda_float32 <= 2 && z.is_cuda() && cuda_float32 > 0 &&
                                                entry[kPlanGemmDtype] == static_cast<int64_t>(at::kFloat));
  DCAE_CHECK_ARG(gemm_ok && through_ok && float32_ok, "gemm_plan", "entries ", plan,
                 " are not a plan ibq_forward makes for z of dtype ", z.scalar_type(), " on ", z.device());
  IbqOperands operands{gemm};
  if (through != -1) operands.rounded_through = static_cast<at::ScalarType>(through);
  operands.cuda_float32 = cuda_float32;
  return operands;
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
  const bool half = gemm_dtype.has_value() && is_half(*gemm_dtype) && z.scalar_type() == at::kFloat;
  if (z.is_cuda()) {
    if (fp16_gemms_accumulate_in_fp16()) {
      // float32 logits from fp16 operands are refused there: fp16 inputs and an fp16 gemm_dtype
      // take float32 operands instead, exact (or TF32, below)
      if (z.scalar_type() == at::kHalf) {
        IbqOperands operands{at::kFloat};  // fp16 values are exact in TF32 too
        operands.cuda_float32 = cublas_float32_rounding();
        return operands;
      }
      if (half && *gemm_dtype == at::kHalf) return ibq_operands(z, codebook, at::kFloat);
    }
    if (half) {
      const HalfFormat format = half_format(*gemm_dtype);
      // bf16 / fp16 operands multiply on tensor cores into float32 logits (aten::mm.dtype).
      if (within_range(z, codebook, format.largest)) {
        return {*gemm_dtype, at::ScalarType::Undefined, format.unit_roundoff, format.smallest_normal};
      }
    }
    if (z.scalar_type() == at::kFloat) return float32_on_cuda();
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

IbqCublasSettingsGuard::IbqCublasSettingsGuard(const IbqOperands& operands, bool cuda) {
  if (!cuda) return;
  at::Context& context = at::globalContext();
  if (operands.gemm_dtype == at::kFloat && cublas_float32_rounding() != operands.cuda_float32) {
    saved_float32_ = static_cast<int64_t>(
        context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL));
    const at::Float32Precision wanted = operands.cuda_float32 == 2   ? at::Float32Precision::BF16
                                        : operands.cuda_float32 == 1 ? at::Float32Precision::TF32
                                                                     : at::Float32Precision::IEEE;
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, wanted);
    restore_float32_ = true;
  }
  if (operands.gemm_dtype == at::kHalf && fp16_gemms_accumulate_in_fp16()) {
    context.setAllowFP16AccumulationCuBLAS(false);
    restore_fp16_accumulation_ = true;
  }
}

IbqCublasSettingsGuard::~IbqCublasSettingsGuard() {
  at::Context& context = at::globalContext();
  if (restore_float32_) {
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL,
                                static_cast<at::Float32Precision>(saved_float32_));
  }
  if (restore_fp16_accumulation_) context.setAllowFP16AccumulationCuBLAS(true);
}

}  // namespace dcae_ext
