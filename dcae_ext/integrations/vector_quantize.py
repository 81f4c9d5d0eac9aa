"""vector-quantize-pytorch on the compiled nearest-code search (docs/vq.md, "vector-quantize-pytorch").

`accelerate(module)` finds every `vector_quantize_pytorch.VectorQuantize` in `module` (the module
itself, or the layers of a ResidualVQ, ...) and gives its codebook an instance-level `forward`
that picks the nearest codes with `dcae_ext.ops.nearest_code` and takes the EMA statistics
(per-code counts and sums of the inputs) from the indices with scatter sums, where the library
builds an N x K distance matrix and an N x K one-hot. Everything else stays the library's own code,
called as it is: k-means init, the EMA update of the codebook, dead-code expiry, the commitment
loss, the rotation trick / straight-through, in-place optimizers. The class is never patched:
other instances are untouched, the parameters and buffers (and state_dict) are the same objects,
and `restore(module)` removes the instance attributes again.

A VectorQuantize with an option that needs the N x K distances themselves (stochastic sampling,
Gumbel straight-through, cross-entropy commitment, codebook diversity loss) or that we do not
reproduce (affine codebook, vq_bridge, a custom sampler) is left unchanged, and the returned
summary says why. Calls that pass `indices=`, `topk=` or `codebook_transform_fn=` run the
library's own search for that call.

Importing this module does not import vector_quantize_pytorch; `accelerate` does.
"""
from __future__ import annotations

import contextlib
import functools
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dcae_ext.ops import code_statistics, nearest_code

_OPTIONS = "_dcae_ext_search"    # codebook attribute: the search options; its presence marks an accelerated codebook
_STOCK_CALL = "_dcae_ext_stock"  # codebook attribute, True while one call runs the library's own forward
_WRAPPED = "_dcae_ext_wrapped"   # VectorQuantize attribute marking its instance-level forward

LEFT_TO_LIBRARY = ("k-means init (one N x K distance matrix, in the first call)",
                   "the EMA update of the codebook from the statistics, dead-code expiry",
                   "the commitment loss, the rotation trick / straight-through, projections, masks",
                   "update_indices() (builds its own one-hot)",
                   "calls with indices=, topk= or codebook_transform_fn= (the library's N x K search for that call)",
                   "orthogonal regularisation, when on (a K x K matrix)")


@dataclass
class Summary:
    """What `accelerate` did: the VectorQuantize modules now searching through dcae_ext (by their
    name in the module given, "" for the module itself), those left unchanged and why, and what
    stays the library's own code in the accelerated ones."""
    accelerated: list[str] = field(default_factory=list)
    unchanged: dict[str, str] = field(default_factory=dict)
    left_to_library: tuple[str, ...] = LEFT_TO_LIBRARY

    def __str__(self) -> str:
        names = ", ".join(_label(name) for name in self.accelerated)
        lines = [f"accelerated {len(self.accelerated)} VectorQuantize: {names}" if names else "accelerated: none"]
        lines += [f"unchanged {_label(name)}: {why}" for name, why in self.unchanged.items()]
        if self.accelerated:
            lines += ["left to vector-quantize-pytorch: " + "; ".join(self.left_to_library)]
        return "\n".join(lines)


def _label(name: str) -> str:
    return repr(name) if name else "the module itself"


def _library():
    try:
        import vector_quantize_pytorch.vector_quantize_pytorch as library
    except ImportError as error:
        raise ImportError("dcae_ext.integrations.vector_quantize needs vector-quantize-pytorch: "
                          "pip install 'dcae-ext[vector-quantize]'") from error
    return library


def accelerate(module: torch.nn.Module, *, exact_index: bool = False) -> Summary:
    """Run the nearest-code search and EMA statistics of every VectorQuantize in `module` through
    dcae_ext's op (in place, per instance; returns what was done). exact_index=True: the float64
    argmax (the same index on every device and dtype path) instead of the float32 one, which like
    the library's own can differ from it where codes are closer than float32 resolves."""
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"argument 'module': expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(exact_index, bool):
        raise ValueError(f"argument 'exact_index': expected a bool, got {exact_index!r}")
    library = _library()
    summary = Summary()
    for name, found in module.named_modules():
        if not isinstance(found, library.VectorQuantize):
            continue
        why = _unsupported(found, library)
        if why:
            summary.unchanged[name] = why
            continue
        codebook = found._codebook
        # the library scores a cosine codebook by the dot product of its l2-normalised inputs and codes
        setattr(codebook, _OPTIONS, {"metric": "dot" if codebook.use_cosine_sim else "l2", "exact_index": exact_index})
        codebook.forward = types.MethodType(_codebook_forward, codebook)
        if not getattr(found, _WRAPPED, False):
            found.forward = types.MethodType(_vector_quantize_forward, found)
            setattr(found, _WRAPPED, True)
        summary.accelerated.append(name)
    if not summary.accelerated and not summary.unchanged:
        raise ValueError(f"argument 'module': no vector_quantize_pytorch.VectorQuantize in {type(module).__name__}")
    return summary


def restore(module: torch.nn.Module) -> int:
    """Undo `accelerate` on every module inside `module`; returns how many were restored."""
    restored = 0
    for found in module.modules():
        state = found.__dict__
        if state.pop(_WRAPPED, False):
            state.pop("forward", None)
            restored += 1
        if state.pop(_OPTIONS, None) is not None:
            state.pop("forward", None)
            state.pop(_STOCK_CALL, None)
    return restored


def is_accelerated(module: torch.nn.Module) -> bool:
    """True when `module` is a VectorQuantize whose codebook searches through dcae_ext."""
    codebook = getattr(module, "_codebook", None)
    return codebook is not None and _OPTIONS in codebook.__dict__


def _unsupported(vq, library) -> str | None:
    """Why this VectorQuantize cannot run on the op (None when it can)."""
    codebook = getattr(vq, "_codebook", None)
    if not isinstance(codebook, getattr(library, "Codebook", ())):
        return "its codebook is not vector_quantize_pytorch's Codebook (another library version?)"
    sampler = codebook.gumbel_sample
    if not (isinstance(sampler, functools.partial) and sampler.func is library.gumbel_sample and not sampler.args):
        return "a custom gumbel_sample"
    if sampler.keywords.get("stochastic"):
        return "stochastic_sample_codes: samples codes with Gumbel noise on the N x K distances"
    if sampler.keywords.get("straight_through"):
        return "straight_through: the Gumbel straight-through takes a softmax over the N x K distances"
    if vq.commitment_use_cross_entropy_loss and vq.has_commitment_loss:
        return "commitment_use_cross_entropy_loss: a cross-entropy over the N x K distances"
    if vq.has_codebook_diversity_loss:
        return "codebook_diversity_loss_weight > 0: a softmax over the N x K distances"
    if codebook.affine_param:
        return "affine_param: the affine codebook transform is not reproduced"
    if codebook.vq_bridge is not None:
        return "vq_bridge: the bridged codebook is not reproduced"
    return None


@contextlib.contextmanager
def _stock_search(codebook):
    """The library's own codebook forward for the calls inside."""
    previous = codebook.__dict__.get(_STOCK_CALL, False)
    codebook.__dict__[_STOCK_CALL] = True
    try:
        yield
    finally:
        codebook.__dict__[_STOCK_CALL] = previous


def _vector_quantize_forward(self, x, indices=None, *args, **kwargs):
    """VectorQuantize.forward; with `indices` (the cross-entropy against given codes) it needs the
    N x K distances, so that call runs the library's own search."""
    forward = type(self).forward
    if indices is None:
        return forward(self, x, None, *args, **kwargs)
    with _stock_search(self._codebook):
        return forward(self, x, indices, *args, **kwargs)


def _codebook_forward(self, x, sample_codebook_temp=None, mask=None, freeze_codebook=False,
                      codebook_transform_fn=None, ema_update_weight=None, accum_ema_update=False, ema_update=None,
                      topk=None, update_usage=True):
    """Codebook.forward (vector-quantize-pytorch 1.32 and 1.34) with the argmax of -cdist (or of the cosine
    scores) from `nearest_code`, quantize = embed[index] (the library's one_hot @ embed, exactly), and
    the EMA statistics from `code_statistics`. Returns (quantize, indices, None): no distances."""
    if topk is not None or codebook_transform_fn is not None or self.__dict__.get(_STOCK_CALL, False):
        return type(self).forward(self, x, sample_codebook_temp=sample_codebook_temp, mask=mask,
                                  freeze_codebook=freeze_codebook, codebook_transform_fn=codebook_transform_fn,
                                  ema_update_weight=ema_update_weight, accum_ema_update=accum_ema_update,
                                  ema_update=ema_update, topk=topk, update_usage=update_usage)
    with torch.autocast("cuda", enabled=False):  # as the library's forward
        return _search_and_update(self, x, mask, freeze_codebook, ema_update_weight, accum_ema_update,
                                  self.ema_update if ema_update is None else ema_update, update_usage)


def _search_and_update(self, x, mask, freeze_codebook, ema_update_weight, accum_ema_update, ema_update,
                       update_usage):
    options = self.__dict__[_OPTIONS]
    needs_codebook_dim = x.ndim < 4
    x = x.float()
    if needs_codebook_dim:
        x = x.unsqueeze(0)
    flatten = x.reshape(x.shape[0], -1, x.shape[-1])  # (heads, N, D): the library's pack 'h * d'
    if mask is not None:
        mask = _repeat_mask(mask, flatten)
    self.init_embed_(flatten, mask=mask)
    embed = (self.embed if self.learnable_codebook else self.embed.detach()).to(x.dtype)
    indices = _stack_heads([nearest_code(rows, codes.detach(), options["metric"], exact_index=options["exact_index"])
                            for rows, codes in zip(flatten, embed)])
    quantize = _stack_heads([F.embedding(head_indices, codes) for head_indices, codes in zip(indices, embed)])
    if self.training and update_usage and not freeze_codebook:
        _update_codebook(self, flatten, indices, mask, ema_update_weight, accum_ema_update, ema_update)
    quantize, indices = quantize.reshape(x.shape), indices.reshape(x.shape[:-1])
    if needs_codebook_dim:
        quantize, indices = quantize[0], indices[0]
    return quantize, indices, None


def _repeat_mask(mask, flatten):
    """The library's repeat(mask, 'b n -> c (b h n)'): one row per head and position."""
    heads, rows = flatten.shape[0], flatten.shape[1]
    per_position = rows // (mask.shape[0] * mask.shape[1])
    return mask.unsqueeze(1).expand(mask.shape[0], per_position, mask.shape[1]).reshape(1, rows).expand(heads, rows)


def _stack_heads(tensors):
    """(heads, ...) from one tensor per head, without a copy for one head (K x D sums can be large)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _update_codebook(self, flatten, indices, mask, ema_update_weight, accum_ema_update, ema_update):
    """Codebook.update_codebook with track_cluster_size_and_embed_avg's one-hot sums replaced by
    scatter sums over the indices; the rest calls the library's own functions and methods."""
    library = _library()
    if not ema_update and not self.has_dead_code_replacement:
        return
    statistics = [code_statistics(rows, head_indices, self.codebook_size) if mask is None else
                  code_statistics(rows[keep], head_indices[keep], self.codebook_size)
                  for rows, head_indices, keep in zip(flatten, indices, mask if mask is not None else flatten)]
    cluster_size, embed_sum = (_stack_heads([found[i] for found in statistics]) for i in (0, 1))
    self.all_reduce_fn(cluster_size)
    self.all_reduce_fn(embed_sum)
    if callable(ema_update_weight):
        ema_update_weight = ema_update_weight(embed_sum, cluster_size)
    if accum_ema_update:
        library.accum_grad_(self.cluster_size, cluster_size)
        library.accum_grad_(self.embed_avg, embed_sum)
        return
    library.ema_inplace(self.cluster_size, cluster_size, self.decay, ema_update_weight)
    library.ema_inplace(self.embed_avg, embed_sum, self.decay, ema_update_weight)
    # the K x D sums go before update_ema makes its K x D quotient (as the library's own, which
    # returns from track_cluster_size_and_embed_avg first): one fewer K x D tensor at the peak
    del statistics, cluster_size, embed_sum
    if ema_update and not self.manual_ema_update:
        self.update_ema()
    self.expire_codes_(flatten, seq_mask=mask)
