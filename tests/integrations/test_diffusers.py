"""dcae_ext.integrations.diffusers: accelerated diffusers models against stock ones on the same weights.

Random weights, small configs. Each model is compared on outputs and gradients (input and every
parameter): float32 within 1e-5 relative; half precision by the package's rule (the error against
the float64 stock model at most twice the stock model's own in that precision, or the dtype's
tolerance). The fused ops are counted as they reach the dispatcher (forward and backward ops), so
a swap that silently runs the stock math fails, and a broken op makes the parity checks fail.
"""
import contextlib
import copy
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dcae_ext.ops
from dcae_ext.testing import TOLERANCES, forbid_reference_fallback

diffusers = pytest.importorskip("diffusers")

from dcae_ext.integrations.diffusers import accelerate, is_accelerated, restore  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _kernels_must_run(monkeypatch):
    forbid_reference_fallback(monkeypatch)


# --- models -------------------------------------------------------------------------------------

SANA = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
            sample_size=8, patch_size=1)
SANA_CONFIGS = {"sana": SANA, "sana_qk_norm": dict(SANA, qk_norm="rms_norm_across_heads", num_layers=1)}

# f8, pixel (un)shuffle, stage 0 empty, BatchNorm + multiscale EfficientViT stages.
DC_IN_STYLE = dict(
    latent_channels=8, attention_head_dim=8,
    encoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
    decoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
    encoder_block_out_channels=[8, 16, 32, 32], decoder_block_out_channels=[8, 16, 32, 32],
    encoder_layers_per_block=[0, 1, 2, 1], decoder_layers_per_block=[0, 2, 1, 1],
    encoder_qkv_multiscales=[[], [], [], [5]], decoder_qkv_multiscales=[[], [], [5], []],
    downsample_block_type="pixel_unshuffle", upsample_block_type="pixel_shuffle",
    decoder_norm_types=["batch_norm", "batch_norm", "rms_norm", "rms_norm"],
    decoder_act_fns=["relu", "relu", "silu", "silu"])
# f4, stride-2 conv / interpolate, two qkv scales; head dim 16 so the 4x4 bottom (16 tokens <= d)
# takes the stock processor's quadratic branch.
DC_SANA_STYLE = dict(
    latent_channels=16, attention_head_dim=16,
    encoder_block_types=["ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
    decoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
    encoder_block_out_channels=[8, 16, 32], decoder_block_out_channels=[8, 16, 32],
    encoder_layers_per_block=[1, 1, 2], decoder_layers_per_block=[2, 1, 1],
    encoder_qkv_multiscales=[[], [3, 5], [5]], decoder_qkv_multiscales=[[], [], [3, 5]],
    downsample_block_type="conv", upsample_block_type="interpolate",
    decoder_norm_types="rms_norm", decoder_act_fns="silu")
DC_NO_SHORTCUT = dict(
    latent_channels=4, attention_head_dim=8,
    encoder_block_types=["ResBlock", "EfficientViTBlock"], decoder_block_types=["ResBlock", "EfficientViTBlock"],
    encoder_block_out_channels=[8, 16], decoder_block_out_channels=[8, 16],
    encoder_layers_per_block=[1, 1], decoder_layers_per_block=[1, 1],
    encoder_qkv_multiscales=[[], []], decoder_qkv_multiscales=[[], [5]],
    decoder_norm_types=["rms_norm", "batch_norm"], decoder_act_fns=["gelu", "silu"],
    encoder_out_shortcut=False, decoder_in_shortcut=False, decoder_conv_act_fn="silu")
DC_CONFIGS = {"in_style": DC_IN_STYLE, "sana_style": DC_SANA_STYLE, "no_shortcut": DC_NO_SHORTCUT}

# Modules of each kind, counted by hand from the configs above.
EXPECTED_SWAPS = {
    "sana": {"sana_linear_attention": 2},
    "sana_qk_norm": {"sana_linear_attention": 1},
    "in_style": {"multiscale_linear_attention": 5, "down_block_shortcut": 2, "up_block_shortcut": 2,
                 "encoder_output_shortcut": 1, "decoder_input_shortcut": 1, "tiling": 1},
    "sana_style": {"multiscale_linear_attention": 4, "down_block_shortcut": 2, "up_block_shortcut": 2,
                   "encoder_output_shortcut": 1, "decoder_input_shortcut": 1, "tiling": 1},
    "no_shortcut": {"multiscale_linear_attention": 2, "down_block_shortcut": 1, "up_block_shortcut": 1,
                    "tiling": 1},
}


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial norm affine parameters and BatchNorm statistics (random init leaves them 1 and 0)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
            if type(module).__name__ in ("RMSNorm", "BatchNorm2d") and getattr(module, "weight", None) is not None:
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in SANA_CONFIGS:
        model = diffusers.SanaTransformer2DModel(**SANA_CONFIGS[name])
    else:
        model = diffusers.AutoencoderDC(**DC_CONFIGS[name])
    _randomise_norms(model)
    return model.eval()


def inputs(name: str, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    if name in SANA_CONFIGS:
        return (torch.randn(2, 4, 8, 8, generator=gen).to(dtype), torch.randn(2, 5, 16, generator=gen).to(dtype),
                torch.tensor([10, 500]))
    return (torch.randn(2, 3, 32, 32, generator=gen).to(dtype),)


def run(model: torch.nn.Module, args: tuple) -> torch.Tensor:
    if isinstance(model, diffusers.SanaTransformer2DModel):
        return model(*args).sample
    return model(*args).sample  # AutoencoderDC.forward: encode then decode


class OpCalls(TorchDispatchMode):
    """Counts the dcae_ext ops that reach the dispatcher (kernels, forward and backward)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith("dcae_ext::"):
            self.counts[name.removeprefix("dcae_ext::")] += 1
        return func(*args, **(kwargs or {}))


def forward_backward(model, args, grad_seed=3, count=True):
    """Output, gradients of the float inputs and of every parameter, and the fused-op calls
    (`count=False`: not counted, for torch.compile, which refuses to trace under a dispatch mode)."""
    model.zero_grad(set_to_none=True)
    args = tuple(a.detach().clone().requires_grad_(a.is_floating_point()) for a in args)
    calls = OpCalls() if count else contextlib.nullcontext(OpCalls())
    with calls as calls:
        out = run(model, args)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
        out.backward(grad)
    grads = [a.grad for a in args if a.is_floating_point()] + [p.grad for p in model.parameters()]
    return out.detach(), grads, calls.counts


def expected_calls(summary_counts: dict, backward: bool = True) -> Counter:
    """Each swapped module calls its op once per forward; the backward runs `_linear_attention_backward`
    once per attention and each shortcut op's backward is the other shortcut op."""
    attention = summary_counts.get("sana_linear_attention", 0) + summary_counts.get("multiscale_linear_attention", 0)
    down = summary_counts.get("down_block_shortcut", 0) + summary_counts.get("encoder_output_shortcut", 0)
    up = summary_counts.get("up_block_shortcut", 0) + summary_counts.get("decoder_input_shortcut", 0)
    calls = Counter(linear_attention=attention, pixel_unshuffle_mean=down, pixel_shuffle_repeat=up)
    if backward:
        calls.update(_linear_attention_backward=attention, pixel_unshuffle_mean=up, pixel_shuffle_repeat=down)
    return +calls


def _norm_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).norm().item()


def assert_same_results(got, want, want64, rtol: float = 1e-5) -> None:
    """Output and every gradient within `rtol` of the stock model's, norm-wise (||got - want|| <=
    rtol ||want||), plus the rounding noise of the precision: three times the stock model's own
    distance from the float64 stock model (got and want may each be that far off, in any direction).
    The noise term matters where the true value is zero (the cross-attention key bias: softmax
    ignores a shift shared by all keys, so both sides hold rounding noise) and in the random small
    models' worst-conditioned gradients, where float32 itself is about 1e-5 off."""
    tensors = [("output", got[0], want[0], want64[0])]
    assert len(got[1]) == len(want[1]) == len(want64[1])
    for i, (g, w, w64) in enumerate(zip(got[1], want[1], want64[1])):
        assert (g is None) == (w is None), i
        if g is not None:
            tensors.append((f"gradient {i}", g, w, w64))
    for what, g, w, w64 in tensors:
        assert g.shape == w.shape and g.dtype == w.dtype, what
        allowed = rtol * w.double().norm().item() + 3 * _norm_error(w, w64)
        assert _norm_error(g, w) <= allowed, (what, _norm_error(g, w), allowed)


@pytest.fixture(scope="module", params=list(SANA_CONFIGS) + list(DC_CONFIGS))
def pair(request):
    """(name, stock model, accelerated copy, the first accelerate's summary)."""
    stock = build(request.param)
    fast = copy.deepcopy(stock)
    summary = accelerate(fast)
    return request.param, stock, fast, summary


# --- parity -------------------------------------------------------------------------------------

def test_summary_counts_every_module_of_each_kind(pair):
    name, _, _, summary = pair
    assert summary.counts == EXPECTED_SWAPS[name]
    assert not summary.left and not summary.unknown


def test_float32_outputs_and_gradients_match_stock_and_every_op_is_called(pair):
    name, stock, fast, summary = pair
    want = forward_backward(stock, inputs(name))
    want64 = forward_backward(copy.deepcopy(stock).double(), inputs(name, torch.float64))
    got = forward_backward(fast, inputs(name))
    assert_same_results(got, want, want64)
    assert want[2] == Counter()
    assert got[2] == expected_calls(summary.counts)
    assert got[2]["linear_attention"] > 0


def test_the_call_count_check_fails_without_the_swaps(pair):
    """The count check is not vacuous: the stock model calls none of the ops."""
    name, stock, _, summary = pair
    with pytest.raises(AssertionError):
        assert forward_backward(stock, inputs(name))[2] == expected_calls(summary.counts)


@pytest.mark.parametrize("op", ["linear_attention", "pixel_unshuffle_mean", "pixel_shuffle_repeat"])
def test_a_broken_op_fails_the_parity_check(pair, op, monkeypatch):
    name, stock, fast, summary = pair
    if not expected_calls(summary.counts, backward=False)[op]:
        pytest.skip(f"{name} has no {op}")
    real = getattr(dcae_ext.ops, op)

    def broken(*args, **kwargs):  # off by 0.1% of a neighbour (a scale alone would vanish in the RMSNorm after it)
        out = real(*args, **kwargs)
        return out + 1e-3 * out.roll(1, dims=-1)

    monkeypatch.setattr(dcae_ext.ops, op, broken)
    want64 = forward_backward(copy.deepcopy(stock).double(), inputs(name, torch.float64))
    with pytest.raises(AssertionError):
        assert_same_results(forward_backward(fast, inputs(name)), forward_backward(stock, inputs(name)), want64)


def _relative_error(got: torch.Tensor, want64: torch.Tensor) -> float:
    """Norm-wise: ||got - want|| / ||want|| (a max over a few elements would be a noisy statistic)."""
    return ((got.double() - want64).norm() / want64.norm().clamp_min(1e-300)).item()


def _assert_half_output_rule(got: torch.Tensor, stock_half: torch.Tensor, stock64: torch.Tensor, dtype) -> None:
    """The package's half-precision rule for a model's output: against the float64 stock model,
    off by at most the dtype's tolerance (relative, norm-wise) or twice the stock model's own
    error in the same precision, whichever is larger."""
    want = stock64.double()
    allowed = max(TOLERANCES[dtype]["rtol"], 2 * _relative_error(stock_half, want))
    assert _relative_error(got, want) <= allowed, (_relative_error(got, want), allowed)


FUSED_OPS = ("linear_attention", "pixel_unshuffle_mean", "pixel_shuffle_repeat")


class RecordedCalls:
    """Every fused call of a run, with its inputs and the gradient that reached its output."""

    def __init__(self, monkeypatch):
        self.calls, self.real = [], {name: getattr(dcae_ext.ops, name) for name in FUSED_OPS}
        for name in FUSED_OPS:
            monkeypatch.setattr(dcae_ext.ops, name, self._recording(name))

    def _recording(self, name):
        def call(*args, **kwargs):
            out = self.real[name](*args, **kwargs)
            record = {"name": name, "args": [a.detach() if torch.is_tensor(a) else a for a in args],
                      "kwargs": {k: v.detach() if torch.is_tensor(v) else v for k, v in kwargs.items()}, "grad": None}
            if out.requires_grad:
                out.register_hook(lambda grad: record.__setitem__("grad", grad.detach()))
            self.calls.append(record)
            return out
        return call


def _run_recorded(fn, record, cast):
    """Output and input gradients of fn on the recorded call's inputs passed through `cast`."""
    args = [cast(a).requires_grad_() if torch.is_tensor(a) else a for a in record["args"]]
    kwargs = {k: cast(v).requires_grad_() if torch.is_tensor(v) else v for k, v in record["kwargs"].items()}
    leaves = [t for t in args + list(kwargs.values()) if torch.is_tensor(t)]
    out = fn(*args, **kwargs)
    grads = torch.autograd.grad(out, leaves, cast(record["grad"]))
    return [out.detach()] + list(grads)


def assert_calls_follow_half_rule(recorded: RecordedCalls) -> None:
    """Gradients of a small random model in half precision are chaotic (the stock model's own
    input gradient can be off by most of its norm), so a model-level comparison of gradients says
    nothing; instead each fused call is checked where it happened, on the inputs and upstream
    gradient it met: the package's rule, the kernel against float64 at most the dtype's tolerance
    of the largest element or twice the error of the reference math run in that precision."""
    from dcae_ext.ops import reference

    checked = 0
    for record in recorded.calls:
        if record["grad"] is None:
            continue
        dtype = record["args"][0].dtype
        ours = _run_recorded(recorded.real[record["name"]], record, lambda t: t.detach().clone())
        baseline = _run_recorded(getattr(reference, record["name"]), record, lambda t: t.detach().clone())
        want = _run_recorded(getattr(reference, record["name"]), record, lambda t: t.detach().double())
        for i, (got, base, truth) in enumerate(zip(ours, baseline, want)):
            allowed = max(TOLERANCES[dtype]["atol"] * truth.abs().max().item(),
                          2 * (base.double() - truth).abs().max().item())
            error = (got.double() - truth).abs().max().item()
            assert error <= allowed, (record["name"], "output" if i == 0 else f"gradient {i}", error, allowed)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_package_rule(pair, dtype, monkeypatch):
    name, stock, fast, _ = pair
    stock64 = forward_backward(copy.deepcopy(stock).double(), inputs(name, torch.float64))
    stock_half = forward_backward(copy.deepcopy(stock).to(dtype), inputs(name, dtype))
    recorded = RecordedCalls(monkeypatch)
    got = forward_backward(copy.deepcopy(fast).to(dtype), inputs(name, dtype))
    assert got[0].dtype == dtype and got[2]["linear_attention"] > 0
    _assert_half_output_rule(got[0], stock_half[0], stock64[0], dtype)
    assert all(g is None or bool(g.isfinite().all()) for g in got[1])
    assert_calls_follow_half_rule(recorded)


def test_bf16_autocast_follows_the_package_rule(pair, monkeypatch):
    name, stock, fast, _ = pair
    stock64 = forward_backward(copy.deepcopy(stock).double(), inputs(name, torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock_half = forward_backward(stock, inputs(name))
        recorded = RecordedCalls(monkeypatch)
        got = forward_backward(fast, inputs(name))
    assert got[2]["linear_attention"] > 0
    assert got[0].dtype == stock_half[0].dtype
    assert all(g is None or bool(g.isfinite().all()) for g in got[1])
    _assert_half_output_rule(got[0], stock_half[0], stock64[0], torch.bfloat16)
    assert_calls_follow_half_rule(recorded)


# --- compile ------------------------------------------------------------------------------------

def test_torch_compile_of_an_accelerated_model_matches_stock(pair):
    """fullgraph compile (aot_eager: the fake impls and autograd registrations are what is tested);
    the traced graph holds our ops, and values and gradients match the stock model."""
    name, stock, fast, summary = pair
    from torch._dynamo import lookup_backend

    traced = Counter()

    def recording_backend(graph_module, example_inputs):
        traced.update(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return lookup_backend("aot_eager")(graph_module, example_inputs)

    torch._dynamo.reset()
    compiled = copy.deepcopy(fast)
    compiled.forward = torch.compile(compiled.forward, backend=recording_backend, fullgraph=True)
    want = forward_backward(stock, inputs(name))
    want64 = forward_backward(copy.deepcopy(stock).double(), inputs(name, torch.float64))
    got = forward_backward(compiled, inputs(name), count=False)
    assert_same_results(got, want, want64)
    ours_traced = {t.removeprefix("dcae_ext."): n for t, n in traced.items() if t.startswith("dcae_ext.")}
    assert ours_traced == expected_calls(summary.counts, backward=False)


# --- accelerate / restore ----------------------------------------------------------------------

def _instance_state(model: torch.nn.Module) -> list[tuple[str, dict]]:
    """Every module's own attributes (not submodules, parameters or buffers): what a swap changes."""
    return [(path, {k: v for k, v in vars(module).items() if not k.startswith("_")})
            for path, module in model.named_modules()]


def test_second_accelerate_changes_nothing(pair):
    name, _, fast, summary = pair
    before = _instance_state(fast)
    again = accelerate(fast)
    assert not again.changed and again.already == summary.counts
    assert "already accelerated" in str(again)
    after = _instance_state(fast)
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, a), (_, b) in zip(before, after):
        assert a.keys() == b.keys() and all(a[k] is b[k] for k in a), path


def test_restore_gives_the_stock_modules_back():
    stock = build("in_style")
    fresh = copy.deepcopy(stock)
    state_before = _instance_state(fresh)
    processors = {path: m.processor for path, m in fresh.named_modules() if hasattr(m, "processor")}
    weights = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    summary = accelerate(fresh)
    assert is_accelerated(fresh)
    undone = restore(fresh)
    assert undone.counts == summary.counts and not is_accelerated(fresh)
    for (path, a), (_, b) in zip(state_before, _instance_state(fresh)):
        assert a.keys() == b.keys(), path
        for key in a:  # the same objects (processors) or equal values (flags)
            assert a[key] is b[key] or a[key] == b[key], (path, key)
    assert all(m.processor is processors[path] for path, m in fresh.named_modules() if path in processors)
    assert {k: v.data_ptr() for k, v in fresh.state_dict().items()} == weights
    restored = forward_backward(fresh, inputs("in_style"))
    want = forward_backward(stock, inputs("in_style"))
    assert restored[2] == Counter()
    assert torch.equal(restored[0], want[0])
    assert not restore(fresh).changed


def test_accelerate_keeps_the_weights_and_state_dict(pair):
    _, stock, fast, _ = pair
    want = stock.state_dict()
    got = fast.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


class TinyPipeline(diffusers.DiffusionPipeline):
    """A pipeline with SanaPipeline's components (SanaPipeline itself needs transformers' Gemma)."""

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)


def test_a_pipeline_is_accelerated_component_by_component():
    transformer, vae = build("sana"), build("in_style")
    pipe = TinyPipeline(tokenizer=None, text_encoder=torch.nn.Linear(2, 2), vae=vae, transformer=transformer,
                        scheduler=diffusers.DPMSolverMultistepScheduler())
    summary = accelerate(pipe)
    assert summary.counts == dict(Counter(EXPECTED_SWAPS["sana"]) + Counter(EXPECTED_SWAPS["in_style"]))
    assert summary.unknown == ["text_encoder (Linear)"]
    text = str(summary)
    assert "transformer (SanaTransformer2DModel): accelerated Sana linear attention x2" in text
    assert "vae (AutoencoderDC)" in text and "text_encoder (Linear)" in text
    assert is_accelerated(pipe.transformer) and is_accelerated(pipe.vae)
    assert restore(pipe).counts == summary.counts and not is_accelerated(pipe)


def test_a_model_without_sana_modules_is_listed_and_left_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))
    summary = accelerate(model)
    assert not summary.changed and summary.unknown == ["model (Sequential)"]
    assert "nothing changed" in str(summary) and "Sequential" in str(summary)


def test_a_non_stock_processor_is_left_and_listed():
    from diffusers.models.attention_processor import PAGCFGSanaLinearAttnProcessor2_0

    model = build("sana")
    custom = PAGCFGSanaLinearAttnProcessor2_0()
    model.transformer_blocks[1].attn1.set_processor(custom)
    summary = accelerate(model)
    assert summary.counts == {"sana_linear_attention": 1}
    assert model.transformer_blocks[1].attn1.processor is custom
    assert any("transformer_blocks.1.attn1" in entry and "PAGCFGSanaLinearAttnProcessor2_0" in entry
               for entry in summary.left), summary.left


def test_anything_else_is_refused_naming_the_argument():
    with pytest.raises(TypeError, match="argument 'obj'"):
        accelerate(42)


def test_importing_dcae_ext_does_not_import_diffusers():
    code = ("import sys, dcae_ext, dcae_ext.integrations, dcae_ext.integrations.diffusers; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- tiling -------------------------------------------------------------------------------------

def test_tiled_decode_uses_the_package_tiler_with_exact_sizes():
    from dcae_ext.models.tiling import tiled_map

    stock = build("in_style")  # f8
    fast = copy.deepcopy(stock)
    accelerate(fast)
    fast.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                       tile_sample_stride_width=24)
    latent = torch.randn(1, 8, 11, 7, generator=torch.Generator().manual_seed(4))  # tiles do not divide it
    with torch.no_grad():
        tiled = fast.decode(latent).sample
        assert tiled.shape == (1, 3, 88, 56)
        torch.testing.assert_close(tiled, tiled_map(fast.decoder, latent, 4, 1, up=8))  # 32 px tiles, 8 px overlap
        fast.disable_tiling()
        untiled = fast.decode(latent).sample
    assert tiled.shape == untiled.shape and not torch.equal(tiled, untiled)
    restore(fast)
    assert fast.tiled_decode.__func__ is type(fast).tiled_decode


def test_tiled_encode_matches_the_untiled_size_and_odd_sizes_go_to_diffusers():
    fast = build("in_style")
    accelerate(fast)
    fast.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16,
                       tile_sample_stride_width=16)
    with torch.no_grad():
        x = torch.randn(1, 3, 72, 48, generator=torch.Generator().manual_seed(5))
        assert fast.encode(x).latent.shape == (1, 8, 9, 6)
        odd = torch.randn(1, 3, 70, 45, generator=torch.Generator().manual_seed(5))
        assert fast.encode(odd).latent.shape == type(fast).tiled_encode(fast, odd).latent.shape


def test_tiling_false_keeps_diffusers_tiler():
    fast = build("in_style")
    summary = accelerate(fast, tiling=False)
    assert "tiling" not in summary.counts and "tiled_decode" not in vars(fast)
    assert restore(fast).counts == summary.counts


def test_forwards_replaced_before_accelerate_are_chained_or_left_and_restored():
    """An instance forward set before (as accelerate's offload hooks do): a wrapped convolution
    calls it for its main path; a block's is left as it is and listed; restore gives both back."""
    model = build("in_style")
    calls = Counter()

    def hooked(module, name):
        stock_forward = module.forward

        def forward(*args, **kwargs):
            calls[name] += 1
            return stock_forward(*args, **kwargs)
        return forward

    conv_hook = hooked(model.encoder.conv_out, "conv_out")
    model.encoder.conv_out.forward = conv_hook
    block = model.encoder.down_blocks[1][1]
    block_hook = hooked(block, "block")
    block.forward = block_hook
    summary = accelerate(model)
    assert summary.counts["encoder_output_shortcut"] == 1 and summary.counts["down_block_shortcut"] == 1
    assert any(entry.startswith("encoder.down_blocks.1.1:") for entry in summary.left), summary.left
    got = forward_backward(model, inputs("in_style"))
    assert calls == {"conv_out": 1, "block": 1}
    restore(model)
    assert model.encoder.conv_out.forward is conv_hook and block.forward is block_hook
    assert model.encoder.out_shortcut
    assert_same_results(got, forward_backward(build("in_style"), inputs("in_style")),
                        forward_backward(build("in_style").double(), inputs("in_style", torch.float64)))


# --- copies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["in_style", "sana"])
def test_torch_save_or_deepcopy_of_an_accelerated_model_is_accelerated_with_the_same_outputs(name):
    """torch.save pickles the whole model; the swapped forwards and tiled encode/decode come back
    bound to the loaded model (a bound method would pickle as `getattr(block, 'down_block_forward')`)."""
    import io

    fast = build(name)
    summary = accelerate(fast)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for copied in (loaded, copy.deepcopy(fast)):
        again = accelerate(copied)
        assert not again.changed and again.already == summary.counts and not again.left
        for module in copied.modules():
            for key in ("forward", "tiled_decode", "tiled_encode"):
                if key in vars(module):
                    assert vars(module)[key].__self__ is module, key
        with torch.no_grad():
            assert torch.equal(run(copied, inputs(name)), run(fast, inputs(name)))
        assert restore(copied).counts == summary.counts
