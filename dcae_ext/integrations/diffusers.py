"""Our fused ops inside diffusers' Sana models, swapped in place on one object (docs/diffusers.md).

    from dcae_ext.integrations.diffusers import accelerate, restore
    summary = accelerate(pipe)      # a SanaPipeline (or any pipeline), SanaTransformer2DModel, AutoencoderDC, ...
    print(summary)                  # what was swapped, per component and kind; what was left as it was
    restore(pipe)                   # the stock modules back

What is swapped, each on the instance only (no diffusers class is changed, every weight stays):
- Sana's self-attention processors (SanaLinearAttnProcessor2_0) -> `ops.linear_attention`;
- AutoencoderDC's multiscale linear attention processors (SanaMultiscaleAttnProcessor2_0) -> the same op;
- AutoencoderDC's down/up-block shortcuts and its encoder-output / decoder-input shortcuts
  -> `ops.pixel_unshuffle_mean` / `ops.pixel_shuffle_repeat`, each fused with the residual add;
- AutoencoderDC's tiled encode/decode (used after `enable_tiling()`) -> the package's tiler
  (`tiling=False` keeps diffusers' own; docs/diffusers.md says how the two blends differ).
A module whose processor or forward is not the stock one (PAG processors, a user's processor, a
hook that replaced a forward) is left as it is and listed; so is a component with nothing to swap.
diffusers is imported when one of these functions is called, never when dcae_ext is imported.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from dcae_ext.integrations import diffusers_shortcuts as shortcuts
from dcae_ext.integrations import diffusers_tiling
from dcae_ext.integrations.diffusers_attention import SanaLinearAttnProcessor, SanaMultiscaleAttnProcessor

KINDS = {
    "sana_linear_attention": "Sana linear attention",
    "multiscale_linear_attention": "multiscale linear attention",
    "down_block_shortcut": "down-block shortcut",
    "up_block_shortcut": "up-block shortcut",
    "encoder_output_shortcut": "encoder output shortcut",
    "decoder_input_shortcut": "decoder input shortcut",
    "tiling": "tiled encode/decode",
}
PIPELINE_MODELS = ("transformer", "vae", "controlnet")  # looked up on objects without .components

STOCK, FUSED = "stock", "fused"  # the states of a swappable module; any other string: why it is left


@dataclass
class ComponentReport:
    """One model of the object: what changed (per kind), what already was accelerated (accelerate
    only), and the modules left as they were ("path: why")."""
    name: str
    class_name: str
    changed: Counter = field(default_factory=Counter)
    already: Counter = field(default_factory=Counter)
    left: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.changed or self.already or self.left)


@dataclass
class Summary:
    """The result of `accelerate` or `restore`; print it for a readable account."""
    action: str  # "accelerate" or "restore"
    components: list[ComponentReport]
    tiling_note: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Modules changed by this call, per kind (KINDS)."""
        return dict(sum((c.changed for c in self.components), Counter()))

    @property
    def already(self) -> dict[str, int]:
        """Modules found already accelerated (by an earlier call), per kind."""
        return dict(sum((c.already for c in self.components), Counter()))

    @property
    def changed(self) -> bool:
        return bool(self.counts)

    @property
    def unknown(self) -> list[str]:
        """Components with nothing dcae-ext swaps, left as they are: "name (Class)"."""
        return [f"{c.name or 'model'} ({c.class_name})" for c in self.components if not c.known]

    @property
    def left(self) -> list[str]:
        return [f"{c.name}.{entry}" if c.name else entry for c in self.components for entry in c.left]

    def __str__(self) -> str:
        verb = "accelerated" if self.action == "accelerate" else "restored"
        total = sum(self.counts.values())
        lines = [f"dcae-ext {self.action}: {total} module(s) {verb}" if total else
                 f"dcae-ext {self.action}: nothing changed"
                 + (" (already accelerated)" if self.action == "accelerate" and self.already else "")]
        for c in self.components:
            if c.changed:
                lines.append(f"  {c.name or 'model'} ({c.class_name}): {verb} {_count_text(c.changed)}")
            if c.already:
                lines.append(f"  {c.name or 'model'} ({c.class_name}): already accelerated {_count_text(c.already)}")
        if self.unknown:
            lines.append("  left as they are (nothing dcae-ext swaps): " + ", ".join(self.unknown))
        for entry in self.left:
            lines.append(f"  left as it is: {entry}")
        if self.tiling_note:
            lines.append(f"  {self.tiling_note}")
        return "\n".join(lines)


def _count_text(counts: Counter) -> str:
    return ", ".join(f"{KINDS[kind]} x{n}" for kind, n in counts.items())


@dataclass(frozen=True)
class _Swap:
    """How one kind of module is recognised, judged, swapped and restored."""
    kind: str
    matches: Callable[[torch.nn.Module], bool]
    state: Callable[[torch.nn.Module], str | None]  # STOCK, FUSED, None (nothing to swap) or why it is left
    apply: Callable[[torch.nn.Module], None]
    undo: Callable[[torch.nn.Module], None]


def accelerate(obj, tiling: bool = True) -> Summary:
    """Swap our fused ops into `obj` (a diffusers pipeline, or a model), in place; returns a Summary.

    A second call changes nothing (the summary says what is already accelerated). With `tiling`,
    an AutoencoderDC's tiled encode/decode (after its `enable_tiling()`) use the package's tiler."""
    swaps = _swaps(with_tiling=tiling)
    reports = []
    for name, model in _models(obj):
        report = ComponentReport(name, type(model).__name__)
        for path, module in model.named_modules():
            for swap in swaps:
                if not swap.matches(module):
                    continue
                state = swap.state(module)
                if state == STOCK:
                    swap.apply(module)
                    report.changed[swap.kind] += 1
                elif state == FUSED:
                    report.already[swap.kind] += 1
                elif state is not None:
                    report.left.append(f"{path or '(root)'}: {state}")
        reports.append(report)
    note = diffusers_tiling.NOTE if any(r.changed["tiling"] or r.already["tiling"] for r in reports) else None
    return Summary("accelerate", reports, note)


def restore(obj) -> Summary:
    """Undo `accelerate` on `obj`: the stock processors and forwards back, exactly as they were."""
    swaps = _swaps(with_tiling=True)
    reports = []
    for name, model in _models(obj):
        report = ComponentReport(name, type(model).__name__)
        for module in model.modules():
            for swap in swaps:
                if swap.matches(module) and swap.state(module) == FUSED:
                    swap.undo(module)
                    report.changed[swap.kind] += 1
        reports.append(report)
    return Summary("restore", reports)


def is_accelerated(obj) -> bool:
    """Whether any module of `obj` runs one of our swaps."""
    swaps = _swaps(with_tiling=True)
    return any(swap.matches(module) and swap.state(module) == FUSED
               for _, model in _models(obj) for module in model.modules() for swap in swaps)


# --- which models -----------------------------------------------------------------------------

def _models(obj) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every model in `obj`, each once: the module itself, or a pipeline's
    torch components (`.components`, else its transformer / vae / controlnet attributes)."""
    if isinstance(obj, torch.nn.Module):
        return [("", obj)]
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        items = list(components.items())
    else:
        items = [(name, getattr(obj, name, None)) for name in PIPELINE_MODELS]
        if all(module is None for _, module in items):
            raise TypeError(f"argument 'obj': expected a diffusers pipeline (with .components) or a torch "
                            f"module such as SanaTransformer2DModel or AutoencoderDC, got {type(obj).__name__}")
    found, seen = [], set()
    for name, module in items:
        if isinstance(module, torch.nn.Module) and id(module) not in seen:
            seen.add(id(module))
            found.append((name, module))
    return found


# --- the swaps ----------------------------------------------------------------------------------

def _stock_classes():
    try:
        from diffusers.models import attention_processor
        from diffusers.models.autoencoders import autoencoder_dc
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("dcae_ext.integrations.diffusers needs diffusers>=0.32: "
                          "pip install 'dcae-ext[diffusers]'") from error
    return attention_processor, autoencoder_dc


def _swaps(with_tiling: bool) -> list[_Swap]:
    ap, dc = _stock_classes()
    found = [
        _Swap("sana_linear_attention",
              lambda m: not isinstance(m, ap.SanaMultiscaleLinearAttention) and _has_sana_processor(m),
              lambda m: _processor_state(m, ap.SanaLinearAttnProcessor2_0, SanaLinearAttnProcessor),
              lambda m: _set_processor(m, SanaLinearAttnProcessor(m.processor)),
              lambda m: _set_processor(m, m.processor.stock)),
        _Swap("multiscale_linear_attention",
              lambda m: isinstance(m, ap.SanaMultiscaleLinearAttention),
              _multiscale_state(ap.SanaMultiscaleAttnProcessor2_0),
              lambda m: _set_processor(m, SanaMultiscaleAttnProcessor(m.processor)),
              lambda m: _set_processor(m, m.processor.stock)),
        _Swap("down_block_shortcut",
              lambda m: isinstance(m, dc.DCDownBlock2d),
              lambda m: _block_state(m, ("conv", "downsample", "factor")),
              lambda m: shortcuts.install(m, shortcuts.down_block_forward),
              shortcuts.uninstall),
        _Swap("up_block_shortcut",
              lambda m: isinstance(m, dc.DCUpBlock2d),
              lambda m: _block_state(m, ("conv", "interpolate", "factor")),
              lambda m: shortcuts.install(m, shortcuts.up_block_forward),
              shortcuts.uninstall),
        _Swap("encoder_output_shortcut",
              lambda m: isinstance(m, dc.Encoder),
              lambda m: _conv_shortcut_state(m, "conv_out", "out_shortcut"),
              lambda m: _fuse_conv_shortcut(m, "conv_out", "out_shortcut", shortcuts.encoder_conv_out_forward),
              lambda m: _unfuse_conv_shortcut(m, "conv_out", "out_shortcut")),
        _Swap("decoder_input_shortcut",
              lambda m: isinstance(m, dc.Decoder),
              lambda m: _conv_shortcut_state(m, "conv_in", "in_shortcut"),
              lambda m: _fuse_conv_shortcut(m, "conv_in", "in_shortcut", shortcuts.decoder_conv_in_forward),
              lambda m: _unfuse_conv_shortcut(m, "conv_in", "in_shortcut")),
    ]
    if with_tiling:
        found.append(_Swap("tiling", lambda m: isinstance(m, dc.AutoencoderDC), diffusers_tiling.state,
                           diffusers_tiling.install, diffusers_tiling.uninstall))
    return found


def _has_sana_processor(module) -> bool:
    processor = module.__dict__.get("processor")
    return processor is not None and "SanaLinearAttnProcessor" in type(processor).__name__


def _processor_state(module, stock_class, ours_class) -> str:
    processor = module.processor
    if isinstance(processor, ours_class):
        return FUSED
    if type(processor) is stock_class:
        return STOCK
    return f"its processor {type(processor).__name__} is not the stock {stock_class.__name__}"


def _multiscale_state(stock_class):
    def state(module) -> str:
        found = _processor_state(module, stock_class, SanaMultiscaleAttnProcessor)
        if found == STOCK and type(module.nonlinearity) is not torch.nn.ReLU:
            return f"its nonlinearity is {type(module.nonlinearity).__name__}, the fused op applies ReLU"
        return found
    return state


def _set_processor(module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def _block_state(block, attributes: tuple[str, ...]) -> str | None:
    if shortcuts.is_fused(block):
        return FUSED
    if not block.shortcut:
        return None
    if shortcuts.installed_forward(block) is not None:
        return "it already has a per-instance forward (a hook?) that the fused one would bypass"
    missing = [a for a in attributes if not hasattr(block, a)]
    if missing:
        return f"this diffusers version's block has no {', '.join(missing)}"
    return STOCK


def _conv_shortcut_state(parent, conv_name: str, flag: str) -> str | None:
    conv = getattr(parent, conv_name)
    if shortcuts.is_fused(conv):
        return FUSED
    if shortcuts.INNER_FORWARD in conv.__dict__:
        return f"{conv_name}'s fused forward was wrapped again since (a hook?); remove that first"
    return STOCK if getattr(parent, flag) else None


def _fuse_conv_shortcut(parent, conv_name: str, flag: str, function) -> None:
    shortcuts.install(getattr(parent, conv_name), function, keep_inner=True)
    setattr(parent, flag, False)  # the parent would add the shortcut a second time


def _unfuse_conv_shortcut(parent, conv_name: str, flag: str) -> None:
    shortcuts.uninstall(getattr(parent, conv_name))
    setattr(parent, flag, True)
