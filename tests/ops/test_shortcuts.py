import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.testing import assert_close_to_reference, device_dtypes, devices

OPS = ["pixel_unshuffle_mean", "pixel_shuffle_repeat"]

# (op, in_channels, factor, out_channels, H, W): factors 1/2/4, group sizes 1/2/4, odd channels.
CASES = [
    ("pixel_unshuffle_mean", 3, 2, 12, 4, 6),    # G = 1
    ("pixel_unshuffle_mean", 3, 2, 6, 6, 4),     # G = 2
    ("pixel_unshuffle_mean", 5, 2, 5, 2, 2),     # G = 4, odd channels
    ("pixel_unshuffle_mean", 7, 4, 28, 8, 4),    # factor 4, G = 4
    ("pixel_unshuffle_mean", 12, 1, 3, 5, 3),    # factor 1: channel averaging, G = 4
    ("pixel_unshuffle_mean", 9, 1, 9, 3, 7),     # factor 1, G = 1 (identity)
    ("pixel_unshuffle_mean", 4100, 1, 1, 2, 3),  # G = 4100: too many sources for the CUDA plane table
    ("pixel_shuffle_repeat", 12, 2, 3, 3, 5),    # R = 1
    ("pixel_shuffle_repeat", 6, 2, 3, 2, 3),     # R = 2
    ("pixel_shuffle_repeat", 5, 2, 5, 3, 2),     # R = 4, odd channels
    ("pixel_shuffle_repeat", 28, 4, 7, 2, 1),    # factor 4
    ("pixel_shuffle_repeat", 3, 1, 12, 4, 5),    # factor 1: channel duplication, R = 4
]


def _out_shape(op, b, c, r, cout, h, w):
    return (b, cout, h // r, w // r) if op == "pixel_unshuffle_mean" else (b, cout, h * r, w * r)


def _inputs(op, c, r, cout, h, w, device, dtype, layout="contiguous", batch=2, scale=1.0):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, c, h, w), generator=gen, dtype=torch.float64) * scale
    res = torch.randn(_out_shape(op, batch, c, r, cout, h, w), generator=gen, dtype=torch.float64)
    x, res = x.to(device=device, dtype=dtype), res.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        res = res.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a view into a larger tensor: every stride differs from contiguous
        x = torch.cat([x, x], dim=3)[:, :, :, ::2]
        x = torch.cat([x, x], dim=1)[:, ::2]
        res = res.transpose(2, 3).contiguous().transpose(2, 3)
    return x, res


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_reference(device, dtype, case, with_residual, layout):
    op, c, r, cout, h, w = case
    x, res = _inputs(op, c, r, cout, h, w, device, dtype, layout)
    x.requires_grad_(True)
    res.requires_grad_(True)
    residual = res if with_residual else None
    out = getattr(ops, op)(x, r, cout, residual=residual)
    grad = torch.randn_like(out)
    out.backward(grad)

    x64 = x.detach().double().requires_grad_(True)
    res64 = res.detach().double().requires_grad_(True)
    expected = getattr(reference, op)(x64, r, cout, residual=res64 if with_residual else None)
    expected.backward(grad.double())

    assert out.dtype == dtype and out.shape == expected.shape
    assert_close_to_reference(out, expected, dtype)
    assert_close_to_reference(x.grad, x64.grad, dtype)
    if with_residual:
        assert_close_to_reference(res.grad, res64.grad, dtype)
    else:
        assert res.grad is None


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("op", OPS)
def test_output_keeps_channels_last(device, op):
    x, _ = _inputs(op, 8, 2, 8, 4, 4, device, torch.float32, "channels_last")
    out = getattr(ops, op)(x, 2, 8)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", devices())
def test_huge_values_half_stay_finite(device):
    # Averaging 4 fp16 values near the fp16 max would overflow if summed in fp16.
    x = torch.full((1, 4, 2, 2), 60000.0, dtype=torch.float16, device=device)
    out = ops.pixel_unshuffle_mean(x, 2, 4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full_like(out.float(), 60000.0))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("op", OPS)
def test_empty_batch(device, op):
    c, r, cout = (4, 2, 8) if op == "pixel_unshuffle_mean" else (8, 2, 4)
    x = torch.randn(0, c, 4, 4, device=device, requires_grad=True)
    out = getattr(ops, op)(x, r, cout)
    assert out.shape[0] == 0
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_gradcheck_float64(op, with_residual):
    c, r, cout = (3, 2, 6) if op == "pixel_unshuffle_mean" else (6, 2, 3)
    x, res = _inputs(op, c, r, cout, 4, 4, "cpu", torch.float64, batch=1)
    x.requires_grad_(True)
    res.requires_grad_(True)
    fn = getattr(ops, op)
    inputs = (x, res) if with_residual else (x,)
    assert torch.autograd.gradcheck(lambda *t: fn(t[0], r, cout, residual=t[1] if with_residual else None), inputs)
    assert torch.autograd.gradgradcheck(lambda *t: fn(t[0], r, cout, residual=t[1] if with_residual else None), inputs)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_opcheck(device, op, with_residual):
    c, r, cout = (3, 2, 6) if op == "pixel_unshuffle_mean" else (6, 2, 3)
    x, res = _inputs(op, c, r, cout, 4, 6, device, torch.float32)
    x.requires_grad_(True)
    args = (x, r, cout, 1.0, res.requires_grad_(True) if with_residual else None)
    torch.library.opcheck(getattr(torch.ops.dcae_ext, op), args)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("op", OPS)
def test_compile_fullgraph_matches_eager(device, op):
    c, r, cout = (4, 2, 8) if op == "pixel_unshuffle_mean" else (8, 2, 4)
    x, res = _inputs(op, c, r, cout, 4, 4, device, torch.float32)
    fn = getattr(ops, op)

    def block(x, res):
        return fn(x * 2.0, r, cout, residual=res).relu()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager, got = block(x1, res), compiled(x2, res)
    torch.testing.assert_close(got, eager)
    eager.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_reference_mode_switch_routes_to_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "pixel_unshuffle_mean",
                        lambda *a, **k: calls.append(1) or torch.zeros(1, 2, 1, 1))
    ops.use_reference(True)
    ops.pixel_unshuffle_mean(torch.randn(1, 2, 2, 2), 2, 2)
    assert calls == [1]
    ops.use_reference(False)
    ops.pixel_unshuffle_mean(torch.randn(1, 2, 2, 2), 2, 2)
    assert calls == [1]


@pytest.mark.parametrize("call,match", [
    (lambda: ops.pixel_unshuffle_mean(torch.randn(2, 4, 4), 2, 4), "'x': expected a 4-D"),
    (lambda: ops.pixel_unshuffle_mean(torch.ones(1, 4, 4, 4, dtype=torch.int64), 2, 4), "'x': expected a floating"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 4, 5, 4), 2, 4), "'factor': 2 does not divide"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 3, 4, 4), 2, 5), "'out_channels': 5 does not divide"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 3, 4, 4), 0, 3), "'factor': must be >= 1"),
    (lambda: ops.pixel_shuffle_repeat(torch.randn(1, 3, 4, 4), 1, 4), "'out_channels'"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 4, 4, 4), 2.0, 4), "'factor': expected an int"),
    (lambda: ops.pixel_shuffle_repeat(torch.randn(1, 4, 4, 4), 2, True), "'out_channels': expected an int"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 4, 4, 4), 2, 4, residual=torch.randn(1, 4, 2, 2, device="meta")),
     "'residual': is on meta"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 4, 4, 4), 2, 4, residual=torch.randn(1, 4, 3, 2)),
     "'residual': expected shape"),
    (lambda: ops.pixel_unshuffle_mean(torch.randn(1, 4, 4, 4), 2, 4,
                                      residual=torch.randn(1, 4, 2, 2, dtype=torch.float64)), "'residual': dtype"),
])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
def test_bad_inputs_raise_value_error(call, match, reference_mode):
    # The same error whether the kernel or the reference would run: the checks are the op's own.
    ops.use_reference(reference_mode)
    with pytest.raises(ValueError, match=match):
        call()


def test_kernel_checks_arguments_too():
    # The compiled op validates on its own (direct torch.ops calls bypass the Python checks).
    with pytest.raises(ValueError, match="argument 'factor'"):
        torch.ops.dcae_ext.pixel_unshuffle_mean(torch.randn(1, 4, 5, 4), 2, 4, 1.0, None)
