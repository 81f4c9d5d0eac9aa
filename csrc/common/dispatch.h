// The dtype rules every op follows, written once: which dtypes a kernel takes, and in which
// dtype it accumulates.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

// float32, float16, bfloat16, and float64 (the gradcheck dtype): the one dtype dispatch of the
// kernels. Inside, `scalar_t` is the input type and `acc_t<scalar_t>` its accumulation type.
#define DCAE_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace dcae_ext {

// Accumulation in float32 for every reduced-precision type (half precision overflows and
// rounds away small terms), float64 for float64. Mirrored in Python by
// dcae_ext.ops.reference.accumulation_dtype.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename AccType<scalar_t>::type;

inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace dcae_ext
