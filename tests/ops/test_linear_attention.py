import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.testing import device_dtypes, devices

# Error allowed against the float64 reference, relative to the largest expected magnitude: the
# kernels accumulate in float32 and round once to the output dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (B, heads, d, N): single token, N < d, the quadratic regime, a long sequence, odd sizes.
SHAPES = [(1, 1, 1, 1), (2, 3, 32, 1), (2, 4, 32, 17), (2, 4, 32, 1024), (1, 2, 16, 4096), (3, 1, 8, 333)]


def _randn(shape, seed, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift


def _qkv(shape, device, dtype, scale=1.0):
    return [_randn(shape, seed, scale).to(device=device, dtype=dtype) for seed in range(3)]


def _assert_close(actual, expected64, dtype):
    tol = TOLERANCE[dtype]
    scale = max(expected64.abs().max().item(), 1.0) if expected64.numel() else 1.0
    torch.testing.assert_close(actual.double().cpu(), expected64.cpu(), atol=tol * scale, rtol=tol)


def _check_against_reference(q, k, v, eps=1e-15, grad_scale=1.0):
    """Runs the op and its backward on q, k, v and compares with the float64 reference."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = ops.linear_attention(*leaves, eps=eps)
    grad = (_randn(out.shape, 7) * grad_scale).to(device=out.device, dtype=out.dtype)
    out.backward(grad)

    leaves64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    expected = reference.linear_attention(*leaves64, eps=eps)
    expected.backward(grad.double())

    assert out.dtype == q.dtype and out.shape == q.shape and out.device == q.device
    assert torch.isfinite(out).all()
    _assert_close(out, expected, q.dtype)
    for got, want in zip(leaves, leaves64):
        assert torch.isfinite(got.grad).all()
        _assert_close(got.grad, want.grad, q.dtype)
    return out


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, dtype, shape):
    _check_against_reference(*_qkv(shape, device, dtype))


@pytest.mark.cuda
def test_cuda_float64():
    # float64 on CUDA runs the ATen composite (the fused kernels cover float32/16, bfloat16).
    _check_against_reference(*_qkv((2, 3, 32, 300), "cuda", torch.float64))


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_odd_head_dims(device, dtype):
    # Head dims between the CUDA kernels' templated sizes (zero-padded) and above the largest.
    for d in (3, 12, 24, 48, 72):
        _check_against_reference(*_qkv((1, 2, d, 150), device, dtype))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_large_enough_to_overflow_half_accumulation(device, dtype):
    shape = (1, 2, 32, 4096)
    q, k, v = _qkv(shape, device, dtype, scale=100.0)
    # Accumulated in the input precision, vk = v relu(k)^T already exceeds the fp16 range (65504).
    vk_half = (v.float() @ k.float().relu().transpose(-1, -2)).to(torch.float16)
    assert not torch.isfinite(vk_half).all()
    _check_against_reference(q, k, v)


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("token_stride", ["unit", "strided"])
def test_views_of_interleaved_qkv(device, dtype, token_stride):
    # DC-AE's LiteMLA: a 1x1 conv gives (B, heads * 3d, H, W) -> view (B, heads, 3d, N) -> split.
    b, heads, d, n = 2, 3, 16, 200
    if token_stride == "unit":
        qkv = _randn((b, heads, 3 * d, n), 0).to(device=device, dtype=dtype)
    else:  # channels-last conv output: the token stride is 3d
        qkv = _randn((b, heads, n, 3 * d), 0).to(device=device, dtype=dtype).transpose(-1, -2)
    qkv.requires_grad_(True)
    q, k, v = qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]
    assert not q.is_contiguous()
    _check_against_reference(q, k, v)

    out = ops.linear_attention(q, k, v)
    out.sum().backward()
    expected64 = qkv.detach().double().requires_grad_(True)
    split = (expected64[:, :, :d], expected64[:, :, d:2 * d], expected64[:, :, 2 * d:])
    reference.linear_attention(*split).sum().backward()
    _assert_close(qkv.grad, expected64.grad, dtype)


def _forward_and_backward(q, k, v, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = ops.linear_attention(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_deterministic_algorithms_give_bitwise_identical_runs(device, dtype):
    # One head of many tokens: on CUDA its state is summed over many blocks (float atomics
    # unless deterministic algorithms are requested); on CPU over several chunks.
    q, k, v = _qkv((1, 1, 32, 1 << 15), device, dtype)
    grad = _randn(q.shape, 7).to(device=device, dtype=dtype)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_forward_and_backward(q, k, v, grad) for _ in range(4)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            assert torch.equal(got, first)
    # and right: against the float64 reference (run outside deterministic mode, whose cuBLAS
    # calls would need CUBLAS_WORKSPACE_CONFIG)
    leaves64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out64 = reference.linear_attention(*leaves64)
    out64.backward(grad.double())
    for got, want in zip(runs[0], [out64.detach()] + [t.grad for t in leaves64]):
        _assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_results_do_not_depend_on_the_thread_count(dtype):
    # Several chunks per head (4096 tokens): the split must come from the shape alone, so that a
    # torchrun rank (OMP_NUM_THREADS=1) and a whole-machine process write the same bytes.
    q, k, v = _qkv((1, 2, 32, 4096), "cpu", dtype)
    grad = _randn(q.shape, 7).to(dtype=dtype)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(_forward_and_backward(q, k, v, grad))
    finally:
        torch.set_num_threads(previous)
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            assert torch.equal(got, first)


def test_strided_views_are_not_copied():
    qkv = torch.randn(2, 3, 48, 64)
    q, k, v = qkv[:, :, :16], qkv[:, :, 16:32], qkv[:, :, 32:]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.linear_attention(q, k, v)
        torch.ops.dcae_ext._linear_attention_backward(torch.randn(2, 3, 16, 64), q, k, v, 1e-15)
    names = {event.name for event in prof.events()}
    assert not names & {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"}, names


@pytest.mark.parametrize("device", devices())
def test_non_positive_queries_give_zero_output_and_no_nan(device):
    # relu(q) = 0 for every token: out = 0 / eps = 0, and the gradients stay finite.
    q = -_randn((1, 2, 8, 40), 0).abs().to(device)
    k, v = _qkv((1, 2, 8, 40), device, torch.float32)[1:]
    out = _check_against_reference(q.float(), k, v)
    assert (out == 0).all()


@pytest.mark.parametrize("device", devices())
def test_empty_inputs(device):
    for shape in [(0, 2, 8, 5), (1, 0, 8, 5), (1, 2, 8, 0), (1, 2, 0, 5)]:
        q, k, v = [torch.randn(shape, device=device, requires_grad=True) for _ in range(3)]
        out = ops.linear_attention(q, k, v)
        assert out.shape == shape
        out.sum().backward()
        assert q.grad.shape == shape and k.grad.shape == shape and v.grad.shape == shape


def test_gradcheck_float64():
    q, k, v = [(_randn((1, 2, 4, 7), seed) + 0.3).requires_grad_(True) for seed in range(3)]
    assert torch.autograd.gradcheck(lambda *t: ops.linear_attention(*t, eps=1e-6), (q, k, v))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["contiguous", "qkv_views"])
def test_opcheck(device, layout):
    if layout == "contiguous":
        q, k, v = _qkv((2, 3, 8, 19), device, torch.float32)
    else:
        qkv = _randn((2, 3, 24, 19), 0).float().to(device)
        q, k, v = qkv[:, :, :8], qkv[:, :, 8:16], qkv[:, :, 16:]
    q, k, v = [t.requires_grad_(True) if t.is_leaf else t for t in (q, k, v)]
    torch.library.opcheck(torch.ops.dcae_ext.linear_attention, (q, k, v, 1e-15))
    grad = torch.randn(q.shape, device=device)
    torch.library.opcheck(torch.ops.dcae_ext._linear_attention_backward,
                          (grad, q.detach(), k.detach(), v.detach(), 1e-15))


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_matches_eager(device):
    q, k, v = _qkv((2, 2, 8, 50), device, torch.float32)

    def block(q, k, v):
        return ops.linear_attention(q * 2.0, k, v).tanh()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    eager_in = [t.clone().requires_grad_(True) for t in (q, k, v)]
    compiled_in = [t.clone().requires_grad_(True) for t in (q, k, v)]
    eager, got = block(*eager_in), compiled(*compiled_in)
    torch.testing.assert_close(got, eager)
    eager.sum().backward()
    got.sum().backward()
    for a, b in zip(compiled_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad)


def test_reference_mode_routes_to_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "linear_attention", lambda *a, **kw: calls.append(1) or a[0])
    q = torch.randn(1, 1, 2, 3)
    ops.use_reference(True)
    ops.linear_attention(q, q, q)
    assert calls == [1]
    ops.use_reference(False)
    ops.linear_attention(q, q, q)
    assert calls == [1]


_X = torch.randn(1, 2, 4, 5)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.linear_attention(_X[0], _X[0], _X[0]), "'q': expected a 4-D"),
    (lambda: ops.linear_attention(_X, torch.randn(1, 2, 4, 6), _X), "'k': shape"),
    (lambda: ops.linear_attention(_X, _X, torch.randn(1, 2, 3, 5)), "'v': shape"),
    (lambda: ops.linear_attention(_X, torch.randn(1, 2, 4, 5, 1), _X), "'k': expected a 4-D"),
    (lambda: ops.linear_attention(torch.ones(1, 2, 4, 5, dtype=torch.int64), _X, _X), "'q': expected a floating"),
    (lambda: ops.linear_attention(_X, _X, _X.double()), "'v': dtype"),
    (lambda: ops.linear_attention(_X, _X.to("meta"), _X), "'k': is on meta"),
    (lambda: ops.linear_attention(_X, _X, _X, eps=0.0), "'eps'"),
    (lambda: ops.linear_attention(_X, _X, _X, eps="1e-6"), "'eps': expected a number"),
    (lambda: ops.linear_attention(_X, _X, [1.0]), "'v': expected a torch.Tensor"),
])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
def test_bad_inputs_raise_value_error(call, match, reference_mode):
    # The same error whether the kernel or the reference would run: the checks are the op's own.
    ops.use_reference(reference_mode)
    with pytest.raises(ValueError, match=match):
        call()


def test_kernel_checks_arguments_too():
    # Direct torch.ops calls bypass the Python checks; the compiled op validates on its own.
    with pytest.raises(ValueError, match="argument 'v'"):
        torch.ops.dcae_ext.linear_attention(_X, _X, torch.randn(1, 2, 4, 6), 1e-15)
    with pytest.raises(ValueError, match="argument 'grad_out'"):
        torch.ops.dcae_ext._linear_attention_backward(torch.randn(1, 2, 4, 6), _X, _X, _X, 1e-15)
    with pytest.raises(ValueError, match="argument 'eps'"):
        torch.ops.dcae_ext.linear_attention(_X, _X, _X, -1.0)
