// CPU kernels of the shortcut ops. Parallel over output rows (b, o, i); each row
// reads its G source rows (or 1) through strides, so every layout works without a copy.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/dispatch.h"
#include "shortcuts/shortcuts.h"

namespace dcae_ext {
namespace {

template <typename scalar_t>
void unshuffle_mean_rows(const ShortcutGeometry& geo, const scalar_t* x, Strides4 xs, scalar_t* y,
                         Strides4 ys, const scalar_t* res, Strides4 rs, double scale) {
  using acc = acc_t<scalar_t>;
  const int64_t r = geo.factor, r2 = r * r, G = geo.group;
  const int64_t rows = geo.batch * geo.out_channels * geo.out_height;
  const acc weight = static_cast<acc>(scale / static_cast<double>(G));
  // Offset of each averaged source (o, g) inside one batch item, computed once, not per row.
  std::vector<int64_t> source_offset(geo.out_channels * G);
  for (int64_t src = 0; src < geo.out_channels * G; ++src) {
    const int64_t c = src / r2, dy = (src % r2) / r, dx = src % r;
    source_offset[src] = c * xs.dim1 + dy * xs.dim2 + dx * xs.dim3;
  }
  const int64_t step = r * xs.dim3;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> sum(geo.out_width);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % geo.out_height;
      const int64_t o = (row / geo.out_height) % geo.out_channels;
      const int64_t b = row / (geo.out_height * geo.out_channels);
      const scalar_t* row_base = x + b * xs.dim0 + i * r * xs.dim2;
      std::fill(sum.begin(), sum.end(), acc(0));
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* in = row_base + source_offset[o * G + g];
        for (int64_t j = 0; j < geo.out_width; ++j) sum[j] += static_cast<acc>(in[j * step]);
      }
      scalar_t* out = y + b * ys.dim0 + o * ys.dim1 + i * ys.dim2;
      if (res != nullptr) {
        const scalar_t* rr = res + b * rs.dim0 + o * rs.dim1 + i * rs.dim2;
        for (int64_t j = 0; j < geo.out_width; ++j)
          out[j * ys.dim3] = static_cast<scalar_t>(static_cast<acc>(rr[j * rs.dim3]) + weight * sum[j]);
      } else {
        for (int64_t j = 0; j < geo.out_width; ++j) out[j * ys.dim3] = static_cast<scalar_t>(weight * sum[j]);
      }
    }
  });
}

template <typename scalar_t>
void shuffle_repeat_rows(const ShortcutGeometry& geo, const scalar_t* x, Strides4 xs, scalar_t* y,
                         Strides4 ys, const scalar_t* res, Strides4 rs, double scale) {
  using acc = acc_t<scalar_t>;
  const int64_t r = geo.factor, r2 = r * r, R = geo.group;
  const int64_t rows = geo.batch * geo.out_channels * geo.out_height;
  const acc weight = static_cast<acc>(scale);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t ho = row % geo.out_height;
      const int64_t o = (row / geo.out_height) % geo.out_channels;
      const int64_t b = row / (geo.out_height * geo.out_channels);
      const int64_t h = ho / r, dy = ho % r;
      scalar_t* out = y + b * ys.dim0 + o * ys.dim1 + ho * ys.dim2;
      const scalar_t* rr = res != nullptr ? res + b * rs.dim0 + o * rs.dim1 + ho * rs.dim2 : nullptr;
      for (int64_t dx = 0; dx < r; ++dx) {
        const int64_t c = (o * r2 + dy * r + dx) / R;  // source channel of the repeated copy
        const scalar_t* in = x + b * xs.dim0 + c * xs.dim1 + h * xs.dim2;
        scalar_t* dst = out + dx * ys.dim3;
        const int64_t step = r * ys.dim3;
        if (rr != nullptr) {
          const scalar_t* rsrc = rr + dx * rs.dim3;
          const int64_t rstep = r * rs.dim3;
          for (int64_t w = 0; w < geo.in_width; ++w)
            dst[w * step] = static_cast<scalar_t>(static_cast<acc>(rsrc[w * rstep]) +
                                                  weight * static_cast<acc>(in[w * xs.dim3]));
        } else {
          for (int64_t w = 0; w < geo.in_width; ++w)
            dst[w * step] = static_cast<scalar_t>(weight * static_cast<acc>(in[w * xs.dim3]));
        }
      }
    }
  });
}

at::Tensor shortcut_cpu(ShortcutKind kind, const at::Tensor& x, int64_t factor, int64_t out_channels,
                        double scale, const c10::optional<at::Tensor>& residual) {
  const ShortcutGeometry geo = check_shortcut_args(kind, x, factor, out_channels, residual);
  DCAE_CHECK_DEVICE_TYPE(x, "x", c10::kCPU);
  at::Tensor y = allocate_shortcut_output(geo, x);
  if (y.numel() == 0) return y;
  const bool has_res = residual.has_value();
  const Strides4 rs = has_res ? strides_of(*residual) : Strides4{};
  DCAE_DISPATCH_FLOATING(x.scalar_type(), "dcae_ext_shortcut_cpu", [&] {
    const scalar_t* res = has_res ? residual->const_data_ptr<scalar_t>() : nullptr;
    if (kind == ShortcutKind::kUnshuffleMean) {
      unshuffle_mean_rows<scalar_t>(geo, x.const_data_ptr<scalar_t>(), strides_of(x),
                                    y.mutable_data_ptr<scalar_t>(), strides_of(y), res, rs, scale);
    } else {
      shuffle_repeat_rows<scalar_t>(geo, x.const_data_ptr<scalar_t>(), strides_of(x),
                                    y.mutable_data_ptr<scalar_t>(), strides_of(y), res, rs, scale);
    }
  });
  return y;
}

at::Tensor pixel_unshuffle_mean_cpu(const at::Tensor& x, int64_t factor, int64_t out_channels,
                                    double scale, const c10::optional<at::Tensor>& residual) {
  return shortcut_cpu(ShortcutKind::kUnshuffleMean, x, factor, out_channels, scale, residual);
}

at::Tensor pixel_shuffle_repeat_cpu(const at::Tensor& x, int64_t factor, int64_t out_channels,
                                    double scale, const c10::optional<at::Tensor>& residual) {
  return shortcut_cpu(ShortcutKind::kShuffleRepeat, x, factor, out_channels, scale, residual);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcae_ext, CPU, m) {
  m.impl("pixel_unshuffle_mean", &pixel_unshuffle_mean_cpu);
  m.impl("pixel_shuffle_repeat", &pixel_shuffle_repeat_cpu);
}

}  // namespace dcae_ext
