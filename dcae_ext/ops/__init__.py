"""The fast ops (docs/ibq.md, docs/vq.md, docs/linear_attention.md, docs/shortcuts.md). Each public function
validates its arguments, then runs the compiled kernel, or its pure-PyTorch twin in
`dcae_ext.ops.reference` when reference mode is on (`use_reference(True)` or
DCAE_EXT_REFERENCE=1) or no kernel exists for the device. `ibq_quantize_sdpa` is IBQ quantization from
scaled_dot_product_attention, no custom kernel: the baseline the IBQ kernel is raced against."""
from dcae_ext.ops import reference
from dcae_ext.ops._library import compiled_backends, reference_mode, use_reference
from dcae_ext.ops.ibq import (ibq_entropy_loss, ibq_nearest_code, ibq_quantize, ibq_quantize_with_entropy,
                              nearest_code)
from dcae_ext.ops.ibq_sdpa import ibq_quantize_sdpa
from dcae_ext.ops.linear_attention import linear_attention
from dcae_ext.ops.shortcuts import pixel_shuffle_repeat, pixel_unshuffle_mean
from dcae_ext.ops.vq import VQOutput, code_statistics, vq_quantize

__all__ = [
    "reference", "use_reference", "reference_mode", "compiled_backends",
    "pixel_unshuffle_mean", "pixel_shuffle_repeat", "linear_attention",
    "nearest_code", "ibq_quantize", "ibq_nearest_code", "ibq_entropy_loss", "ibq_quantize_with_entropy",
    "ibq_quantize_sdpa", "vq_quantize", "VQOutput", "code_statistics",
]
