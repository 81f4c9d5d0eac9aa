// Raw access to tensors inside kernels: strides passed by value, optional pointers, and the
// output layout rule.
#pragma once

#include <ATen/ATen.h>

namespace dcae_ext {

// Element strides of a 4-D tensor, dimension by dimension: element (i0, i1, i2, i3) sits at
// i0 * dim0 + i1 * dim1 + i2 * dim2 + i3 * dim3 from the data pointer. Kernels take these so
// that any layout (channels_last, slices of a larger tensor) works without a copy.
struct Strides4 {
  int64_t dim0, dim1, dim2, dim3;
};

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The data pointer of an optional tensor, nullptr when it is undefined.
template <typename T>
T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The output keeps the input's layout: channels_last in, channels_last out. Mirrored in Python
// by dcae_ext.ops.shortcuts._output_layout (the fake impl).
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

}  // namespace dcae_ext
