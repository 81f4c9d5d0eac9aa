// DC-AE residual shortcuts (docs/shortcuts.md): space-to-channel averaging and
// channel-to-space duplication, each with an optional fused residual add:
//   pixel_unshuffle_mean: y = residual + scale * mean over G of pixel_unshuffle(x, r) channel groups
//   pixel_shuffle_repeat: y = residual + scale * pixel_shuffle(repeat_interleave(x, R), r)
// `scale` lets each op serve as the other's backward (1/G and R respectively).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "common/tensor_access.h"

namespace dcae_ext {

enum class ShortcutKind { kUnshuffleMean, kShuffleRepeat };

// Validated geometry of one call: the input (B, C, H, W), the output (B, Cout, Ho, Wo),
// the factor r and the group size (G channels averaged, or R copies).
struct ShortcutGeometry {
  int64_t batch, in_channels, in_height, in_width;
  int64_t out_channels, out_height, out_width;
  int64_t factor, group;
};

// Checks the arguments (messages name them) and returns the geometry.
ShortcutGeometry check_shortcut_args(ShortcutKind kind, const at::Tensor& x, int64_t factor,
                                     int64_t out_channels,
                                     const c10::optional<at::Tensor>& residual);

// Allocates the output in x's layout.
at::Tensor allocate_shortcut_output(const ShortcutGeometry& geo, const at::Tensor& x);

}  // namespace dcae_ext
