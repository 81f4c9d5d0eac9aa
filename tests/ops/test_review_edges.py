"""Edge inputs found by an adversarial review of the public ops: each once gave a wrong answer
(a tensor of a wrong shape, NaN, second-order gradients missing) or an exception that did not
name the argument."""
import math

import pytest
import torch

from dcae_ext import ops

META = "meta"


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device=META)


# On meta tensors the ops reach their fake impls, which compute output shapes only: these calls
# returned a tensor (of a wrong shape for the first ones) instead of the CPU call's ValueError.
META_CASES = [
    (lambda: ops.pixel_unshuffle_mean(_meta(2, 4, 6, 6), 4, 8), "'factor': 4 does not divide"),
    (lambda: ops.pixel_unshuffle_mean(_meta(2, 4, 6, 6), 2, 3), "'out_channels': 3 does not divide"),
    (lambda: ops.pixel_unshuffle_mean(_meta(2, 4, 6, 6), 0, 8), "'factor': must be >= 1"),
    (lambda: ops.pixel_unshuffle_mean(_meta(2, 4, 6, 6), 2, 8, _meta(1, 8, 1, 1)), "'residual': expected shape"),
    (lambda: ops.pixel_unshuffle_mean(_meta(2, 4, 6, 6, dtype=torch.int64), 2, 8), "'x': expected a floating"),
    (lambda: ops.pixel_unshuffle_mean(_meta(4, 6, 6), 2, 8), "'x': expected a 4-D tensor"),
    (lambda: ops.pixel_shuffle_repeat(_meta(2, 6, 6, 6), 2, 4), "'out_channels'"),
    (lambda: ops.pixel_shuffle_repeat(_meta(2, 4, 6, 6), 2, 8, _meta(2, 8, 12, 12, dtype=torch.float16)),
     "'residual': dtype Half"),
    (lambda: ops.linear_attention(_meta(1, 1, 2, 3), _meta(1, 1, 2, 4), _meta(1, 1, 2, 3)), "'k': shape"),
    (lambda: ops.linear_attention(*[_meta(1, 1, 2, 3)] * 3, eps=0.0), "'eps'"),
    (lambda: ops.linear_attention(*[_meta(1, 2, 3)] * 3), "'q': expected a 4-D tensor"),
    (lambda: ops.ibq_quantize(_meta(4, 8), _meta(5, 7)), "'codebook': dimension 7"),
    (lambda: ops.ibq_quantize(_meta(4, 8), _meta(0, 8)), "'codebook': needs at least one code"),
    (lambda: ops.ibq_quantize(_meta(4, 8), _meta(5, 8, dtype=torch.float16)), "'codebook': dtype Half"),
    (lambda: ops.ibq_entropy_loss(_meta(4, 8), _meta(5, 8), 0.0), "'temperature'"),
    (lambda: ops.nearest_code(_meta(4, 8), _meta(8), "l2"), "'codebook': expected a 2-D tensor"),
    (lambda: ops.vq_quantize(_meta(4, 8), _meta(5, 7)), "'codebook': dimension 7"),
]


@pytest.mark.parametrize("call,message", META_CASES)
def test_bad_arguments_on_meta_tensors_raise_as_on_cpu(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_good_meta_calls_still_give_the_output_shapes():
    assert ops.pixel_unshuffle_mean(_meta(2, 4, 6, 6), 2, 8, _meta(2, 8, 3, 3)).shape == (2, 8, 3, 3)
    assert ops.pixel_shuffle_repeat(_meta(2, 4, 6, 6), 2, 8).shape == (2, 8, 12, 12)
    assert ops.linear_attention(*[_meta(1, 2, 4, 3)] * 3).shape == (1, 2, 4, 3)
    z_q, idx, ent = ops.ibq_quantize_with_entropy(_meta(2, 3, 8), _meta(5, 8))
    assert (z_q.shape, idx.shape, idx.dtype, ent.shape) == ((2, 3, 8), (2, 3), torch.int64, ())


@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
def test_unshuffle_of_zero_channels_is_refused(reference_mode):
    # mean over groups of G = 0 channels: the kernel returned NaN and its backward divided by G = 0
    x = torch.randn(2, 0, 6, 6, requires_grad=True)
    previous = ops.use_reference(reference_mode)
    try:
        with pytest.raises(ValueError, match="argument 'x': needs at least one channel"):
            ops.pixel_unshuffle_mean(x, 2, 4)
    finally:
        ops.use_reference(previous)


def _shortcut_with_grad(op, x, factor, out_channels):
    x = x.detach().requires_grad_(True)
    y = op(x, factor, out_channels)
    y.backward(torch.ones_like(y))
    return y, x.grad


@pytest.mark.parametrize("name", ["pixel_unshuffle_mean", "pixel_shuffle_repeat"])
@pytest.mark.parametrize("shape", [(0, 4, 6, 6), (2, 4, 0, 6), (2, 4, 6, 0)], ids=["B=0", "H=0", "W=0"])
def test_shortcut_references_of_empty_inputs_have_the_kernels_shapes(name, shape):
    # F.pixel_unshuffle / F.pixel_shuffle return an empty input unchanged: the reference (and so
    # use_reference(True)) gave (0, 8, 6, 6) for an unshuffle to (0, 8, 3, 3), and its backward failed.
    x = torch.randn(shape)
    y, grad = _shortcut_with_grad(getattr(ops, name), x, 2, 8)
    y_ref, grad_ref = _shortcut_with_grad(getattr(ops.reference, name), x, 2, 8)
    factor = 1 / 2 if name == "pixel_unshuffle_mean" else 2
    assert y.shape == (shape[0], 8, int(shape[2] * factor), int(shape[3] * factor))
    assert y_ref.shape == y.shape and grad_ref.shape == grad.shape == x.shape


_Z = torch.randn(6, 8)
_IDX = torch.tensor([0, 3, 3, 9, 1, 0])

# code_statistics checked nothing: an index out of range gave "index out of range in self" (on CUDA a
# device-side assert that ends the process), indices of another length a RuntimeError from index_add_,
# a float z or num_codes as a tensor went through.
STATISTICS_CASES = [
    (lambda: ops.code_statistics(_Z, torch.tensor([0, 1, 2, 3, 4, 10]), 10), "'indices': values must lie in 0..9"),
    (lambda: ops.code_statistics(_Z, torch.tensor([0, 1, 2, 3, 4, -1]), 10), "'indices': values must lie in 0..9"),
    (lambda: ops.code_statistics(_Z, _IDX, 0), "'num_codes': must be >= 1"),
    (lambda: ops.code_statistics(_Z, _IDX, 10.0), "'num_codes': expected an int"),
    (lambda: ops.code_statistics(_Z, _IDX, torch.tensor(10)), "'num_codes': expected an int"),
    (lambda: ops.code_statistics(_Z, _IDX.float(), 10), "'indices': expected an int64 or int32 tensor"),
    (lambda: ops.code_statistics(_Z, _IDX > 2, 10), "'indices': expected an int64 or int32 tensor"),
    (lambda: ops.code_statistics(_Z, _IDX[:5], 10), r"'indices': shape \[5\] differs from z's \[6\]"),
    (lambda: ops.code_statistics(_Z, _IDX.reshape(3, 2), 10), r"'indices': shape \[3, 2\] differs"),
    (lambda: ops.code_statistics(_Z.long(), _IDX, 10), "'z': expected a floating-point tensor"),
    (lambda: ops.code_statistics(torch.tensor(1.0), torch.tensor(0), 10), "'z': expected a tensor of shape"),
    (lambda: ops.code_statistics(_Z.tolist(), _IDX, 10), "'z': expected a torch.Tensor"),
    (lambda: ops.code_statistics(_Z, _IDX.tolist(), 10), "'indices': expected a torch.Tensor"),
    (lambda: ops.code_statistics(_Z, _IDX.to(META), 10), "'indices': is on meta"),
]


@pytest.mark.parametrize("call,message", STATISTICS_CASES)
def test_code_statistics_names_the_bad_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_code_statistics_equal_the_one_hot_sums(dtype):
    z = torch.randn(2, 3, 8, dtype=torch.float64).to(dtype)
    indices = torch.tensor([[0, 3, 3], [9, 1, 0]])
    counts, sums = ops.code_statistics(z, indices.int(), 10)
    one_hot = torch.nn.functional.one_hot(indices.reshape(-1), 10).double()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert counts.dtype == sums.dtype == acc
    torch.testing.assert_close(counts, one_hot.sum(0).to(acc))
    torch.testing.assert_close(sums, (one_hot.t() @ z.reshape(6, 8).double()).to(acc))
    empty_counts, empty_sums = ops.code_statistics(torch.randn(0, 8), torch.zeros(0, dtype=torch.int64), 10)
    assert empty_counts.shape == (10,) and empty_sums.shape == (10, 8) and not empty_sums.any()
    assert [t.shape for t in ops.code_statistics(z.to(META), indices.to(META), 10)] == [(10,), (10, 8)]


@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
@pytest.mark.parametrize("weight", [math.nan, math.inf, -0.25])
def test_vq_commitment_weight_must_be_finite_and_not_negative(reference_mode, weight):
    # a NaN weight made commitment_loss (and so out.loss) NaN, a negative one pushed z away from its code
    previous = ops.use_reference(reference_mode)
    try:
        with pytest.raises(ValueError, match="argument 'commitment_weight': expected a finite number >= 0"):
            ops.vq_quantize(torch.randn(4, 3), torch.randn(5, 3), commitment_weight=weight)
    finally:
        ops.use_reference(previous)
    assert ops.vq_quantize(torch.randn(4, 3), torch.randn(5, 3), commitment_weight=0).commitment_loss == 0


@pytest.mark.parametrize("name,x,factor,out_channels", [
    ("pixel_unshuffle_mean", torch.randn(1, 4, 0, 0), 2**32, 3),   # 4 * 2^64 wrapped to 0: "3 divides it"
    ("pixel_shuffle_repeat", torch.randn(1, 4, 0, 1), 2**31, 4),   # 4 * 2^62 wrapped to 0: "a multiple of 4"
    ("pixel_shuffle_repeat", torch.randn(1, 4, 1, 1), 2**31, 4),   # was "Storage size calculation overflowed"
])
def test_shortcut_factor_whose_square_overflows_int64_is_refused(name, x, factor, out_channels):
    # the compiled check multiplies the channels by factor^2 in int64, which wrapped
    with pytest.raises(ValueError, match="argument 'factor'.*too large"):
        getattr(ops, name)(x, factor, out_channels)


def _second_order(fn, inputs):
    """d/d inputs of |d(weighted outputs)/d inputs|^2: a gradient penalty, through the op's backward."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    outputs = [o for o in fn(*inputs) if o.is_floating_point()]
    weighted = sum((o * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outputs)
    grads = torch.autograd.grad(weighted, inputs, create_graph=True)
    penalty = sum(g.square().sum() for g in grads)
    return grads, torch.autograd.grad(penalty, inputs)


def _as_tuple(fn):
    return lambda *args: (lambda out: out if isinstance(out, tuple) else (out,))(fn(*args))


# With create_graph=True the backward ops ran as opaque kernels: linear_attention's gradients had
# no graph above them (second-order gradients None, only a warning: "silently incorrect"), IBQ's
# raised "mm(): functions with out=... arguments don't support automatic differentiation".
SECOND_ORDER_CASES = [
    ("linear_attention", lambda q, k, v: ops.linear_attention(q, k, v),
     lambda q, k, v: ops.reference.linear_attention(q, k, v), [(2, 2, 3, 5)] * 3),
    ("linear_attention N<=d", lambda q, k, v: ops.linear_attention(q, k, v),
     lambda q, k, v: ops.reference.linear_attention(q, k, v), [(1, 2, 6, 4)] * 3),
] + [
    (f"ibq_quantize_with_entropy {metric}",
     lambda z, c, m=metric: ops.ibq_quantize_with_entropy(z, c, 0.7, metric=m),
     lambda z, c, m=metric: ops.reference.ibq_quantize_with_entropy(z, c, 0.7, m), [(2, 3, 4), (6, 4)])
    for metric in ("dot", "l2", "cosine")
] + [
    ("ibq_quantize", ops.ibq_quantize, ops.reference.ibq_quantize, [(5, 3), (4, 3)]),
    ("ibq_entropy_loss", lambda z, c: ops.ibq_entropy_loss(z, c, 0.3),
     lambda z, c: ops.reference.ibq_entropy_loss(z, c, 0.3), [(5, 3), (4, 3)]),
]


@pytest.mark.parametrize("name,fn,reference_fn,shapes", SECOND_ORDER_CASES, ids=[c[0] for c in SECOND_ORDER_CASES])
def test_second_order_gradients_equal_the_references(name, fn, reference_fn, shapes):
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    grads, second = _second_order(_as_tuple(fn), inputs)
    want_grads, want_second = _second_order(_as_tuple(reference_fn), inputs)
    for got, want in zip(grads + second, want_grads + want_second):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_second_order_leaves_inputs_without_grad_alone():
    q, k, v = (torch.randn(1, 1, 3, 5, dtype=torch.float64) for _ in range(3))
    q.requires_grad_(True)
    dq, = torch.autograd.grad(ops.linear_attention(q, k, v).sum(), q, create_graph=True)
    z, codebook = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    dc, = torch.autograd.grad(ops.ibq_quantize_with_entropy(z, codebook, 0.5)[2], codebook, create_graph=True)
    assert dq.requires_grad and dc.requires_grad
    assert torch.autograd.gradgradcheck(lambda t: ops.linear_attention(t, k, v), (q,))
    assert torch.autograd.gradgradcheck(lambda c: ops.ibq_entropy_loss(z, c, 0.5), (codebook,))


def test_a_first_order_backward_still_runs_the_kernels(monkeypatch):
    # the differentiable (reference) backward is for create_graph=True only
    def refuse(*args, **kwargs):
        raise AssertionError("a first-order backward ran the reference")

    for name in ("linear_attention", "ibq_logits", "ibq_entropy_loss"):
        monkeypatch.setattr(ops.reference, name, refuse)
    q, k, v = (torch.randn(1, 2, 3, 5, requires_grad=True) for _ in range(3))
    ops.linear_attention(q, k, v).sum().backward()
    z, codebook = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    z_q, _, entropy = ops.ibq_quantize_with_entropy(z, codebook, 0.5)
    (z_q.sum() + entropy).backward()
    assert all(t.grad is not None for t in (q, k, v, z, codebook))
