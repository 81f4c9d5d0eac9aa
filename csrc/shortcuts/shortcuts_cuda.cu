// CUDA kernels of the shortcut ops. One thread per output element in a grid-stride
// loop; the linear index is decomposed in the output's own memory order (W fastest
// for NCHW, C fastest for channels_last) so stores coalesce. Memory-bound: each input
// element is read once (G reads per output for the mean), each output written once.
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "shortcuts/shortcuts.h"

namespace dcae_ext {
namespace {

struct OutIndex {
  int64_t b, o, i, j;
};

template <bool kChannelsLast>
__device__ __forceinline__ OutIndex decompose(int64_t idx, int64_t C, int64_t H, int64_t W) {
  OutIndex p;
  if (kChannelsLast) {
    p.o = idx % C; idx /= C;
    p.j = idx % W; idx /= W;
    p.i = idx % H; p.b = idx / H;
  } else {
    p.j = idx % W; idx /= W;
    p.i = idx % H; idx /= H;
    p.o = idx % C; p.b = idx / C;
  }
  return p;
}

template <typename scalar_t, bool kChannelsLast, bool kResidual>
__global__ void unshuffle_mean_kernel(ShortcutGeometry geo, const scalar_t* __restrict__ x, Strides4 xs,
                                      scalar_t* __restrict__ y, Strides4 ys,
                                      const scalar_t* __restrict__ res, Strides4 rs, acc_t<scalar_t> weight,
                                      int64_t total) {
  using acc = acc_t<scalar_t>;
  const int64_t r = geo.factor, r2 = r * r, G = geo.group;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const OutIndex p = decompose<kChannelsLast>(idx, geo.out_channels, geo.out_height, geo.out_width);
    const scalar_t* base = x + p.b * xs.b + (p.i * r) * xs.h + (p.j * r) * xs.w;
    acc sum = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t src = p.o * G + g;
      const int64_t c = src / r2, dy = (src % r2) / r, dx = src % r;
      sum += static_cast<acc>(base[c * xs.c + dy * xs.h + dx * xs.w]);
    }
    acc value = weight * sum;
    if (kResidual) value += static_cast<acc>(res[p.b * rs.b + p.o * rs.c + p.i * rs.h + p.j * rs.w]);
    y[p.b * ys.b + p.o * ys.c + p.i * ys.h + p.j * ys.w] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, bool kChannelsLast, bool kResidual>
__global__ void shuffle_repeat_kernel(ShortcutGeometry geo, const scalar_t* __restrict__ x, Strides4 xs,
                                      scalar_t* __restrict__ y, Strides4 ys,
                                      const scalar_t* __restrict__ res, Strides4 rs, acc_t<scalar_t> weight,
                                      int64_t total) {
  using acc = acc_t<scalar_t>;
  const int64_t r = geo.factor, r2 = r * r, R = geo.group;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const OutIndex p = decompose<kChannelsLast>(idx, geo.out_channels, geo.out_height, geo.out_width);
    const int64_t dy = p.i % r, dx = p.j % r;
    const int64_t c = (p.o * r2 + dy * r + dx) / R;
    acc value = weight * static_cast<acc>(x[p.b * xs.b + c * xs.c + (p.i / r) * xs.h + (p.j / r) * xs.w]);
    if (kResidual) value += static_cast<acc>(res[p.b * rs.b + p.o * rs.c + p.i * rs.h + p.j * rs.w]);
    y[p.b * ys.b + p.o * ys.c + p.i * ys.h + p.j * ys.w] = static_cast<scalar_t>(value);
  }
}

at::Tensor shortcut_cuda(ShortcutKind kind, const at::Tensor& x, int64_t factor, int64_t out_channels,
                         double scale, const c10::optional<at::Tensor>& residual) {
  const ShortcutGeometry geo = check_shortcut_args(kind, x, factor, out_channels, residual);
  DCAE_CHECK_DEVICE_TYPE(x, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = allocate_shortcut_output(geo, x);
  const int64_t total = y.numel();
  if (total == 0) return y;
  const bool has_res = residual.has_value();
  const bool channels_last = layout_of(x) == at::MemoryFormat::ChannelsLast;
  const Strides4 rs = has_res ? strides_of(*residual) : Strides4{0, 0, 0, 0};
  const unsigned int blocks = grid_for(total);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  DCAE_DISPATCH_FLOATING(x.scalar_type(), "dcae_ext_shortcut_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* res = has_res ? residual->const_data_ptr<scalar_t>() : nullptr;
    const acc weight = kind == ShortcutKind::kUnshuffleMean ? static_cast<acc>(scale / geo.group)
                                                            : static_cast<acc>(scale);
    auto launch = [&](auto kernel) {
      kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(geo, x.const_data_ptr<scalar_t>(), strides_of(x),
                                                      y.mutable_data_ptr<scalar_t>(), strides_of(y), res, rs,
                                                      weight, total);
    };
    if (kind == ShortcutKind::kUnshuffleMean) {
      if (channels_last) has_res ? launch(unshuffle_mean_kernel<scalar_t, true, true>)
                                 : launch(unshuffle_mean_kernel<scalar_t, true, false>);
      else has_res ? launch(unshuffle_mean_kernel<scalar_t, false, true>)
                   : launch(unshuffle_mean_kernel<scalar_t, false, false>);
    } else {
      if (channels_last) has_res ? launch(shuffle_repeat_kernel<scalar_t, true, true>)
                                 : launch(shuffle_repeat_kernel<scalar_t, true, false>);
      else has_res ? launch(shuffle_repeat_kernel<scalar_t, false, true>)
                   : launch(shuffle_repeat_kernel<scalar_t, false, false>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor pixel_unshuffle_mean_cuda(const at::Tensor& x, int64_t factor, int64_t out_channels,
                                     double scale, const c10::optional<at::Tensor>& residual) {
  return shortcut_cuda(ShortcutKind::kUnshuffleMean, x, factor, out_channels, scale, residual);
}

at::Tensor pixel_shuffle_repeat_cuda(const at::Tensor& x, int64_t factor, int64_t out_channels,
                                     double scale, const c10::optional<at::Tensor>& residual) {
  return shortcut_cuda(ShortcutKind::kShuffleRepeat, x, factor, out_channels, scale, residual);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcae_ext, CUDA, m) {
  m.impl("pixel_unshuffle_mean", &pixel_unshuffle_mean_cuda);
  m.impl("pixel_shuffle_repeat", &pixel_shuffle_repeat_cuda);
}

}  // namespace dcae_ext
