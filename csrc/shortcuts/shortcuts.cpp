// Schemas and argument checks of the shortcut ops; kernels in shortcuts_cpu.cpp / shortcuts_cuda.cu.
#include "shortcuts/shortcuts.h"

#include <torch/library.h>

#include "common/checks.h"

namespace dcae_ext {

ShortcutGeometry check_shortcut_args(ShortcutKind kind, const at::Tensor& x, int64_t factor,
                                     int64_t out_channels,
                                     const c10::optional<at::Tensor>& residual) {
  DCAE_CHECK_DIM(x, "x", 4);
  DCAE_CHECK_FLOATING(x, "x");
  DCAE_CHECK_ARG(factor >= 1, "factor", "must be >= 1, got ", factor);
  DCAE_CHECK_ARG(out_channels >= 1, "out_channels", "must be >= 1, got ", out_channels);
  ShortcutGeometry geo;
  geo.batch = x.size(0);
  geo.in_channels = x.size(1);
  geo.in_height = x.size(2);
  geo.in_width = x.size(3);
  geo.out_channels = out_channels;
  geo.factor = factor;
  const int64_t r2 = factor * factor;
  if (kind == ShortcutKind::kUnshuffleMean) {
    DCAE_CHECK_ARG(geo.in_height % factor == 0 && geo.in_width % factor == 0, "factor",
                   factor, " does not divide the spatial size ", geo.in_height, "x", geo.in_width);
    DCAE_CHECK_ARG((geo.in_channels * r2) % out_channels == 0, "out_channels", out_channels,
                   " does not divide in_channels * factor^2 = ", geo.in_channels * r2);
    geo.group = geo.in_channels * r2 / out_channels;
    geo.out_height = geo.in_height / factor;
    geo.out_width = geo.in_width / factor;
  } else {
    DCAE_CHECK_ARG(geo.in_channels >= 1, "x", "needs at least one channel");
    DCAE_CHECK_ARG((out_channels * r2) % geo.in_channels == 0, "out_channels",
                   "out_channels * factor^2 = ", out_channels * r2,
                   " is not a multiple of the input channels ", geo.in_channels);
    geo.group = out_channels * r2 / geo.in_channels;
    geo.out_height = geo.in_height * factor;
    geo.out_width = geo.in_width * factor;
  }
  if (residual.has_value()) {
    const at::Tensor& res = *residual;
    DCAE_CHECK_SAME_DTYPE(x, "x", res, "residual");
    DCAE_CHECK_SAME_DEVICE(x, "x", res, "residual");
    const std::vector<int64_t> expected{geo.batch, out_channels, geo.out_height, geo.out_width};
    DCAE_CHECK_ARG(res.sizes().vec() == expected, "residual", "expected shape ", at::IntArrayRef(expected),
                   ", got ", res.sizes());
  }
  return geo;
}

at::Tensor allocate_shortcut_output(const ShortcutGeometry& geo, const at::Tensor& x) {
  return at::empty({geo.batch, geo.out_channels, geo.out_height, geo.out_width},
                   x.options().memory_format(layout_of(x)));
}

}  // namespace dcae_ext

namespace {

// The argument checks alone, for the Python side when it runs the reference instead.
void check_shortcut_args_op(const at::Tensor& x, int64_t factor, int64_t out_channels,
                            const c10::optional<at::Tensor>& residual, bool unshuffle) {
  using dcae_ext::ShortcutKind;
  dcae_ext::check_shortcut_args(unshuffle ? ShortcutKind::kUnshuffleMean : ShortcutKind::kShuffleRepeat, x, factor,
                                out_channels, residual);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dcae_ext, m) {
  m.def("_check_shortcut_args(Tensor x, int factor, int out_channels, Tensor? residual, bool unshuffle) -> ()",
        &check_shortcut_args_op);
  m.def("pixel_unshuffle_mean(Tensor x, int factor, int out_channels, float scale, Tensor? residual) -> Tensor");
  m.def("pixel_shuffle_repeat(Tensor x, int factor, int out_channels, float scale, Tensor? residual) -> Tensor");
}
