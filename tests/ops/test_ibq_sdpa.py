"""The SDPA formulation of IBQ quantization (dcae_ext/ops/ibq_sdpa.py) against the reference and
the compiled op: values, indices and gradients, ties across chunks, NaN and inf, bad arguments."""
from unittest import mock

import pytest
import torch

from dcae_ext import ops
from dcae_ext.bench.memory import tracked_peak_mb
from dcae_ext.ops import reference
from dcae_ext.ops.ibq_sdpa import _chunk_logits, chunked_argmax, codes_per_chunk, ibq_quantize_sdpa
from dcae_ext.testing import assert_compiled_step_matches_eager, codebook_grad_without_scatter, device_dtypes, devices
from dcae_ext.testing import ibq_inputs as _inputs
from dcae_ext.testing import ibq_poisoned_codes, ibq_poisoned_rows

# (N, K, D): one code, odd sizes, many codes, D = 1024.
SHAPES = [(1, 1, 1), (7, 13, 5), (13, 257, 17), (130, 2053, 13), (5, 33, 1024)]
# Gradient error allowed, as a fraction of the gradient's largest element (as in test_ibq.py).
TOL = {torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _chunk_bytes(n, codes, dtype):
    """The budget that makes the argmax take `codes` codes per chunk."""
    return n * codes * (8 if dtype == torch.float64 else 4)


def _run(fn, z, codebook, grad_z_q):
    """fn -> (z_q, idx, d z, d codebook) of <z_q, G>, on fresh leaves."""
    z = z.detach().clone().requires_grad_(True)
    codebook = codebook.detach().clone().requires_grad_(True)
    z_q, idx = fn(z, codebook)
    grad_z, grad_codebook = torch.autograd.grad((z_q.double() * grad_z_q).sum(), (z, codebook))
    return z_q.detach(), idx, grad_z, grad_codebook


def _upstream(z):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(z.shape, generator=gen, dtype=torch.float64).to(z.device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("codes", [1, 4, None], ids=["1-code-chunks", "4-code-chunks", "one-chunk"])
def test_float64_values_and_gradients_equal_the_reference_and_the_kernel(shape, codes):
    n, k, d = shape
    z, codebook = _inputs(n, k, d, "cpu", torch.float64)
    grad_z_q = _upstream(z)
    chunk_bytes = _chunk_bytes(n, codes, torch.float64) if codes else 2**30
    got = _run(lambda a, b: ibq_quantize_sdpa(a, b, chunk_bytes), z, codebook, grad_z_q)
    for name, fn in (("reference", reference.ibq_quantize), ("kernel", ops.ibq_quantize)):
        want = _run(fn, z, codebook, grad_z_q)
        assert torch.equal(got[1], want[1]), name
        assert torch.equal(got[0], codebook[got[1]]), name  # exactly the chosen codes
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12, msg=lambda m: f"{name} z_q: {m}")
        for what, mine, theirs in (("d z", got[2], want[2]), ("d codebook", got[3], want[3])):
            atol = 1e-12 * max(theirs.abs().max().item(), 1.0)
            torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=atol, msg=lambda m: f"{name} {what}: {m}")


def _same_precision_reference(z, codebook):
    """The reference math with every intermediate in z's own dtype (no float32 accumulation)."""
    with mock.patch.object(reference, "accumulation_dtype", lambda dtype: dtype):
        return reference.ibq_quantize(z, codebook)


# Half precision runs on CUDA only: there flash attention keeps the logits in float32 and rounds
# P and dS to the dtype for its GEMMs, the baseline below. The CPU kernels round more (at D = 1024,
# d z is off by 5% (float16) and 16% (bfloat16) of its largest element): docs/ibq.md.
PRECISION_CASES = [("cpu", torch.float32)] + [pytest.param("cuda", dtype, marks=pytest.mark.cuda)
                                              for dtype in (torch.float32, torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("device,dtype", PRECISION_CASES)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_low_precision_is_as_close_to_float64_as_the_reference(device, dtype, shape):
    n, k, d = shape
    z, codebook = _inputs(n, k, d, device, dtype)
    grad_z_q = _upstream(z)
    got = _run(lambda a, b: ibq_quantize_sdpa(a, b, _chunk_bytes(n, 16, dtype)), z, codebook, grad_z_q)
    same_dtype = _run(reference.ibq_quantize, z, codebook, grad_z_q)
    want64 = _run(reference.ibq_quantize, z.double(), codebook.double(), grad_z_q)
    baselines = [same_dtype]
    if dtype in (torch.float16, torch.bfloat16):
        baselines.append(_run(_same_precision_reference, z, codebook, grad_z_q))

    assert got[1].dtype == torch.int64 and got[0].dtype == dtype and torch.equal(got[0], codebook[got[1]])
    logits = z.double() @ codebook.double().t()
    for row in (got[1] != same_dtype[1]).nonzero().flatten().tolist():  # only near-ties may differ
        gap = (logits[row, got[1][row]] - logits[row, same_dtype[1][row]]).abs().item()
        assert gap <= 1e-5 * logits[row].abs().max().item() + 1e-6, (row, gap)
    parts = {"d z": lambda r: r[2].double(),
             "d codebook": lambda r: codebook_grad_without_scatter(r[3], r[1], grad_z_q)}
    for what, part in parts.items():
        scale = part(want64).abs().max().item()
        atol = max([TOL[dtype] * scale] + [2 * (part(base) - part(want64)).abs().max().item() for base in baselines])
        torch.testing.assert_close(part(got), part(want64), rtol=TOL[dtype], atol=atol,
                                   msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("codes", [1, 8, None], ids=["1-code-chunks", "8-code-chunks", "one-chunk"])
def test_ties_pick_the_lowest_index_across_chunks(device, dtype, codes):
    z, codebook = _inputs(6, 20, 4, device, dtype)
    codebook = codebook / codebook.norm(dim=1, keepdim=True)  # then argmax z . C_k of z = 4 C_j is j
    codebook[9] = codebook[2]    # same chunk of 8 as code 2
    codebook[17] = codebook[2]   # a later chunk
    codebook[3] = codebook[12]   # the duplicate in the earlier chunk comes first
    z[:3] = codebook[2] * 4
    z[3:] = codebook[12] * 4
    chunk_bytes = _chunk_bytes(6, codes, dtype) if codes else 2**30
    _, idx = ibq_quantize_sdpa(z, codebook, chunk_bytes)
    assert idx.tolist() == [2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("codes", [4, None], ids=["4-code-chunks", "one-chunk"])
def test_nan_and_inf_follow_torch_argmax(device, dtype, codes):
    # The policy of ops.ibq_quantize (docs/ibq.md): idx is torch.argmax of the logits; a row whose
    # softmax is undefined gets a NaN z_q, every other row its code.
    for z, codebook in (ibq_poisoned_rows(device, dtype), ibq_poisoned_codes(device, dtype)):
        z_q, idx = ibq_quantize_sdpa(z, codebook, _chunk_bytes(z.shape[0], codes, dtype) if codes else 2**30)
        logits = reference.ibq_logits(z, codebook)
        assert torch.equal(idx, logits.argmax(dim=-1))
        undefined = ~torch.logsumexp(logits, dim=-1).isfinite()
        assert undefined.any() and torch.equal(z_q.isnan().all(dim=-1), undefined)
        assert torch.equal(z_q[~undefined], codebook[idx[~undefined]])


def test_the_argmax_holds_one_chunk_of_logits_not_n_by_k():
    n, k, d = 256, 32768, 16
    z, codebook = _inputs(n, k, d, "cpu", torch.float32)
    chunk_bytes = 2**20  # 1024 codes of 256 rows
    assert codes_per_chunk(n, chunk_bytes) == 1024
    full_mb = n * k * 4 / 2**20  # 32 MB
    assert tracked_peak_mb(lambda: chunked_argmax(z, codebook, 2**30)) >= full_mb  # one chunk: the whole
    assert tracked_peak_mb(lambda: chunked_argmax(z, codebook, chunk_bytes)) < 4 * chunk_bytes / 2**20


@pytest.mark.skipif(not hasattr(torch.ops.aten.mm, "dtype"), reason="torch.mm has no out_dtype here")
def test_half_precision_logits_come_out_of_the_gemm_in_float32():
    # The CUDA path of the argmax (half operands, float32 output), on meta tensors: the call
    # and what it returns; its values are checked by the CUDA cases above.
    rows = torch.empty(5, 8, dtype=torch.bfloat16, device="meta")
    codes = torch.empty(3, 8, dtype=torch.bfloat16, device="meta")
    logits = _chunk_logits(rows, codes, torch.float32)
    assert logits.shape == (5, 3) and logits.dtype == torch.float32


def test_chunk_size_comes_from_the_budget():
    assert codes_per_chunk(16384, 256 * 2**20) == 4096
    assert codes_per_chunk(16384, 256 * 2**20, itemsize=8) == 2048
    assert codes_per_chunk(10**9, 1) == 1  # never zero codes
    assert codes_per_chunk(0, 100) == 100


@pytest.mark.parametrize("device", devices())
def test_leading_batch_dims(device):
    z, codebook = _inputs(5, 37, 8, device, torch.float32, batch=(2, 3))
    z_q, idx = ibq_quantize_sdpa(z, codebook)
    want_z_q, want_idx = ops.ibq_quantize(z, codebook)
    assert z_q.shape == z.shape and idx.shape == (2, 3, 5)
    assert torch.equal(idx, want_idx) and torch.equal(z_q, want_z_q)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("batch", [(0,), (2, 0)])
def test_empty_rows(device, batch):
    codebook = torch.randn(11, 6, device=device, requires_grad=True)
    z = torch.randn((*batch, 6), device=device, requires_grad=True)
    z_q, idx = ibq_quantize_sdpa(z, codebook)
    assert z_q.shape == z.shape and idx.shape == batch
    z_q.sum().backward()
    assert z.grad.shape == z.shape and torch.equal(codebook.grad, torch.zeros_like(codebook))


@pytest.mark.parametrize("call,match", [
    (lambda: ibq_quantize_sdpa(torch.randn(4, 3), torch.randn(5, 4)), "'codebook': dimension 4"),
    (lambda: ibq_quantize_sdpa(torch.ones(4, 3, dtype=torch.int64), torch.randn(5, 3)), "'z': expected a floating"),
    (lambda: ibq_quantize_sdpa(torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64)), "'codebook': dtype"),
    (lambda: ibq_quantize_sdpa(torch.randn(4, 3), torch.randn(0, 3)), "'codebook': needs at least one"),
    (lambda: ibq_quantize_sdpa(torch.randn(4, 0), torch.randn(5, 0)), "'z': needs a last dimension"),
    (lambda: ibq_quantize_sdpa(torch.randn(4, 3), torch.randn(5, 3, device="meta")), "'codebook': is on meta"),
    (lambda: ibq_quantize_sdpa([1.0], torch.randn(5, 3)), "'z': expected a torch.Tensor"),
    (lambda: ibq_quantize_sdpa(torch.randn(()), torch.randn(5, 3)), "'z': expected a tensor of shape"),
    (lambda: ibq_quantize_sdpa(torch.randn(4, 3), torch.randn(5, 3), 0), "'chunk_bytes': must be at least 1"),
    (lambda: ibq_quantize_sdpa(torch.randn(4, 3), torch.randn(5, 3), 1.5), "'chunk_bytes': expected an int"),
])
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_matches_eager(device):
    z, codebook = _inputs(10, 40, 8, device, torch.float32, batch=(2,))

    def step(z, codebook):
        z_q, idx = ibq_quantize_sdpa(z * 1.5, codebook, 8 * 20 * 4)  # 8 codes per chunk: a traced loop
        return (z_q - z).square().mean(), idx

    assert_compiled_step_matches_eager(step, z, codebook)
