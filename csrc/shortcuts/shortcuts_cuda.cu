// CUDA kernels of the shortcut ops. Memory-bound: each input element is read once (G reads
// per output for the mean, neighbours in one cache line), each output written once, stores
// coalesced in the output's own memory order (W fastest for NCHW, C for channels_last).
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/static_switch.h"
#include "shortcuts/shortcuts.h"

namespace dcae_ext {
namespace {

// Launch shape. NCHW output: blockIdx.x walks the (b, o) output planes, blockIdx.y and the
// threads walk the plane's pixels, so a block shares one plane's source offsets (kept in shared
// memory) and the per-element index math is one 32-bit division. channels_last output: a block
// per output pixel (grid-stride), threads walk the channels, which are contiguous there.
// Either way the costly 64-bit divisions happen once per block, not per element.
constexpr int kMaxPlaneBlocksY = 65535;
constexpr int64_t kMaxPlaneTable = 4096;  // int64 offsets in the default 48 KB of shared memory

template <typename scalar_t, bool kResidual>
__global__ void unshuffle_mean_planes(ShortcutGeometry geo, const scalar_t* __restrict__ x, Strides4 xs,
                                      scalar_t* __restrict__ y, Strides4 ys, const scalar_t* __restrict__ res,
                                      Strides4 rs, acc_t<scalar_t> weight) {
  extern __shared__ int64_t source_offset[];  // [G]: offset of source g of this plane's channel
  using acc = acc_t<scalar_t>;
  const int64_t plane = blockIdx.x;
  const int64_t o = plane % geo.out_channels, b = plane / geo.out_channels;
  const int r = static_cast<int>(geo.factor), r2 = r * r, G = static_cast<int>(geo.group);
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    const int64_t src = o * G + g;
    source_offset[g] = (src / r2) * xs.dim1 + ((src % r2) / r) * xs.dim2 + (src % r) * xs.dim3;
  }
  __syncthreads();
  const int wo = static_cast<int>(geo.out_width);
  const int pixels = static_cast<int>(geo.out_height) * wo;
  const scalar_t* xb = x + b * xs.dim0;
  for (int s = blockIdx.y * blockDim.x + threadIdx.x; s < pixels; s += gridDim.y * blockDim.x) {
    const int i = s / wo, j = s - i * wo;
    const scalar_t* in = xb + (int64_t)i * r * xs.dim2 + (int64_t)j * r * xs.dim3;
    acc sum = 0;
    for (int g = 0; g < G; ++g) sum += static_cast<acc>(in[source_offset[g]]);
    acc value = weight * sum;
    if (kResidual) value += static_cast<acc>(res[b * rs.dim0 + o * rs.dim1 + i * rs.dim2 + j * rs.dim3]);
    y[b * ys.dim0 + o * ys.dim1 + i * ys.dim2 + j * ys.dim3] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, bool kResidual>
__global__ void shuffle_repeat_planes(ShortcutGeometry geo, const scalar_t* __restrict__ x, Strides4 xs,
                                      scalar_t* __restrict__ y, Strides4 ys, const scalar_t* __restrict__ res,
                                      Strides4 rs, acc_t<scalar_t> weight) {
  extern __shared__ int64_t channel_offset[];  // [r*r]: source channel offset per (dy, dx)
  using acc = acc_t<scalar_t>;
  const int64_t plane = blockIdx.x;
  const int64_t o = plane % geo.out_channels, b = plane / geo.out_channels;
  const int r = static_cast<int>(geo.factor), r2 = r * r;
  for (int q = threadIdx.x; q < r2; q += blockDim.x) channel_offset[q] = ((o * r2 + q) / geo.group) * xs.dim1;
  __syncthreads();
  const int wo = static_cast<int>(geo.out_width);
  const int pixels = static_cast<int>(geo.out_height) * wo;
  const scalar_t* xb = x + b * xs.dim0;
  for (int s = blockIdx.y * blockDim.x + threadIdx.x; s < pixels; s += gridDim.y * blockDim.x) {
    const int i = s / wo, j = s - i * wo;
    const int h = i / r, w = j / r;
    const int q = (i - h * r) * r + (j - w * r);
    acc value = weight * static_cast<acc>(xb[channel_offset[q] + h * xs.dim2 + w * xs.dim3]);
    if (kResidual) value += static_cast<acc>(res[b * rs.dim0 + o * rs.dim1 + i * rs.dim2 + j * rs.dim3]);
    y[b * ys.dim0 + o * ys.dim1 + i * ys.dim2 + j * ys.dim3] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, bool kResidual>
__global__ void unshuffle_mean_pixels(ShortcutGeometry geo, const scalar_t* __restrict__ x, Strides4 xs,
                                      scalar_t* __restrict__ y, Strides4 ys, const scalar_t* __restrict__ res,
                                      Strides4 rs, acc_t<scalar_t> weight, int64_t pixels) {
  using acc = acc_t<scalar_t>;
  const int r = static_cast<int>(geo.factor), r2 = r * r, G = static_cast<int>(geo.group);
  const int channels = static_cast<int>(geo.out_channels);
  for (int64_t p = blockIdx.x; p < pixels; p += gridDim.x) {
    const int64_t j = p % geo.out_width, rest = p / geo.out_width;
    const int64_t i = rest % geo.out_height, b = rest / geo.out_height;
    const scalar_t* in = x + b * xs.dim0 + i * r * xs.dim2 + j * r * xs.dim3;
    for (int o = threadIdx.x; o < channels; o += blockDim.x) {
      acc sum = 0;
      for (int g = 0; g < G; ++g) {
        // the source channel-pixel o * G + g < C r^2 may pass 2^31: int64
        const int64_t src = static_cast<int64_t>(o) * G + g;
        const int64_t c = src / r2;
        const int rem = static_cast<int>(src - c * r2), dy = rem / r, dx = rem - dy * r;
        sum += static_cast<acc>(in[c * xs.dim1 + dy * xs.dim2 + dx * xs.dim3]);
      }
      acc value = weight * sum;
      if (kResidual) value += static_cast<acc>(res[b * rs.dim0 + o * rs.dim1 + i * rs.dim2 + j * rs.dim3]);
      y[b * ys.dim0 + o * ys.dim1 + i * ys.dim2 + j * ys.dim3] = static_cast<scalar_t>(value);
    }
  }
}

template <typename scalar_t, bool kResidual>
__global__ void shuffle_repeat_pixels(ShortcutGeometry geo, const scalar_t* __restrict__ x, Strides4 xs,
                                      scalar_t* __restrict__ y, Strides4 ys, const scalar_t* __restrict__ res,
                                      Strides4 rs, acc_t<scalar_t> weight, int64_t pixels) {
  using acc = acc_t<scalar_t>;
  const int r = static_cast<int>(geo.factor), r2 = r * r, R = static_cast<int>(geo.group);
  const int channels = static_cast<int>(geo.out_channels);
  for (int64_t p = blockIdx.x; p < pixels; p += gridDim.x) {
    const int64_t j = p % geo.out_width, rest = p / geo.out_width;
    const int64_t i = rest % geo.out_height, b = rest / geo.out_height;
    const int q = static_cast<int>((i % r) * r + (j % r));
    const scalar_t* in = x + b * xs.dim0 + (i / r) * xs.dim2 + (j / r) * xs.dim3;
    for (int o = threadIdx.x; o < channels; o += blockDim.x) {
      acc value = weight * static_cast<acc>(in[((static_cast<int64_t>(o) * r2 + q) / R) * xs.dim1]);
      if (kResidual) value += static_cast<acc>(res[b * rs.dim0 + o * rs.dim1 + i * rs.dim2 + j * rs.dim3]);
      y[b * ys.dim0 + o * ys.dim1 + i * ys.dim2 + j * ys.dim3] = static_cast<scalar_t>(value);
    }
  }
}

at::Tensor shortcut_cuda(ShortcutKind kind, const at::Tensor& x, int64_t factor, int64_t out_channels,
                         double scale, const c10::optional<at::Tensor>& residual) {
  const ShortcutGeometry geo = check_shortcut_args(kind, x, factor, out_channels, residual);
  DCAE_CHECK_DEVICE_TYPE(x, "x", c10::kCUDA);
  // the kernels hold r, r^2 and the group size in int
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  DCAE_CHECK_ARG(geo.factor <= 46340 && geo.group <= kIntMax, "factor", "factor ", geo.factor, " (group of ",
                 geo.group, " channels) is beyond the CUDA kernels' 32-bit index range");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = allocate_shortcut_output(geo, x);
  if (y.numel() == 0) return y;
  const bool has_res = residual.has_value();
  const bool channels_last = layout_of(x) == at::MemoryFormat::ChannelsLast;
  const Strides4 rs = has_res ? strides_of(*residual) : Strides4{};
  const bool unshuffle = kind == ShortcutKind::kUnshuffleMean;
  const int64_t plane_pixels = geo.out_height * geo.out_width;
  const int64_t pixels = geo.batch * plane_pixels;
  // Per-pixel blocks need the channels in int (always, in practice); per-plane blocks need the
  // plane's pixel count in int, one block per plane, and the plane's offset table in shared memory.
  const int64_t plane_table = unshuffle ? geo.group : geo.factor * geo.factor;  // shared-memory entries
  const bool by_pixels = (channels_last || plane_table > kMaxPlaneTable) && geo.out_channels <= (int64_t(1) << 30);
  // the per-plane loops count pixels in int, and their last step may pass the end by a grid stride
  const int64_t plane_pixels_max = (int64_t(1) << 31) - int64_t(kMaxPlaneBlocksY) * kThreadsPerBlock;
  TORCH_CHECK(by_pixels || (plane_pixels < plane_pixels_max && geo.batch * geo.out_channels < (int64_t(1) << 31)),
              "dcae_ext: shortcut output planes too large for this kernel: ", y.sizes());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  DCAE_DISPATCH_FLOATING(x.scalar_type(), "dcae_ext_shortcut_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* res = has_res ? residual->const_data_ptr<scalar_t>() : nullptr;
    const acc weight = unshuffle ? static_cast<acc>(scale / geo.group) : static_cast<acc>(scale);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const Strides4 xs = strides_of(x), ys = strides_of(y);
    if (by_pixels) {
      const int threads = static_cast<int>(std::min<int64_t>(kThreadsPerBlock, (geo.out_channels + 31) / 32 * 32));
      const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(pixels, int64_t(1) << 20));
      DCAE_BOOL_SWITCH(has_res, kResidual, [&] {
        auto kernel =
            unshuffle ? unshuffle_mean_pixels<scalar_t, kResidual> : shuffle_repeat_pixels<scalar_t, kResidual>;
        kernel<<<blocks, threads, 0, stream>>>(geo, xp, xs, yp, ys, res, rs, weight, pixels);
      });
    } else {
      const dim3 grid(static_cast<unsigned int>(geo.batch * geo.out_channels),
                      static_cast<unsigned int>(std::min<int64_t>((plane_pixels + kThreadsPerBlock - 1) / kThreadsPerBlock,
                                                                  kMaxPlaneBlocksY)));
      const size_t shared = sizeof(int64_t) * plane_table;
      DCAE_BOOL_SWITCH(has_res, kResidual, [&] {
        auto kernel =
            unshuffle ? unshuffle_mean_planes<scalar_t, kResidual> : shuffle_repeat_planes<scalar_t, kResidual>;
        kernel<<<grid, kThreadsPerBlock, shared, stream>>>(geo, xp, xs, yp, ys, res, rs, weight);
      });
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
