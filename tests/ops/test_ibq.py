import sys
from unittest import mock

import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.ops.ibq import _run
from dcae_ext.testing import assert_compiled_step_matches_eager, codebook_grad_without_scatter, device_dtypes, devices
from dcae_ext.testing import ibq_inputs as _inputs

MODES = {"quantize": (True, False), "entropy": (False, True), "both": (True, True)}
# Fused result vs the reference run on the same inputs (both accumulate in float32, float64 for
# float64); low-precision results are rounded to the dtype once. Gradients are judged against
# their own scale: the error may be this fraction of the gradient's largest element.
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _losses(fn, z, codebook, mode, grad_z_q, grad_entropy):
    """Runs fn -> (z_q, idx, entropy) and returns them with d/dz, d/dcodebook of <z_q, G> + gE*entropy."""
    z = z.detach().clone().requires_grad_(True)
    codebook = codebook.detach().clone().requires_grad_(True)
    z_q, idx, ent = fn(z, codebook)
    quantize, entropy = MODES[mode]
    loss = 0.0
    if quantize:
        loss = loss + (z_q.float() * grad_z_q).sum()
    if entropy:
        loss = loss + ent.float() * grad_entropy
    grad_z, grad_c = torch.autograd.grad(loss, (z, codebook))
    return z_q.detach(), idx, ent.detach(), grad_z, grad_c


def _reference(z, codebook, temperature):
    z_q, idx = reference.ibq_quantize(z, codebook)
    return z_q, idx, reference.ibq_entropy_loss(z, codebook, temperature)


def _same_precision_reference(z, codebook, temperature):
    """The reference math with every intermediate in z's own dtype (no float32 accumulation)."""
    with mock.patch.object(reference, "accumulation_dtype", lambda dtype: dtype):
        return _reference(z, codebook, temperature)


def _upstream(z, codebook, mode, temperature):
    """The upstream gradients (G of z_q, gE of the entropy). With both losses, gE is chosen so
    that the entropy's part of d z is as large as the quantize part: at D = 1024 the entropy
    gradient is 1e4 times smaller at equal weights, and a wrong one would hide in the rounding
    of the other."""
    grad_z_q = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_z_q = grad_z_q.to(z.device, torch.float32)
    if mode != "both":
        return grad_z_q, 0.75
    z64, codebook64 = z.double(), codebook.double()
    reference_fn = lambda a, b: _reference(a, b, temperature)  # noqa: E731
    quantize_scale = _losses(reference_fn, z64, codebook64, "quantize", grad_z_q, 0.0)[3].abs().max().item()
    entropy_scale = _losses(reference_fn, z64, codebook64, "entropy", grad_z_q, 1.0)[3].abs().max().item()
    return grad_z_q, (quantize_scale / entropy_scale if entropy_scale > 0 and quantize_scale > 0 else 0.75)


def _without_scatter(result, grad_z_q, quantize):
    """d codebook of a result, less the scatter of G into its rows idx when it quantizes."""
    return codebook_grad_without_scatter(result[4], result[1], grad_z_q) if quantize else result[4].double()


def _max_error(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _assert_grads_match(got, want64, baselines, mode, grad_z_q, tol, floor=0.0):
    """Gradients of `got` against the float64 reference on the same inputs, each judged against
    its own scale: the error may be `tol` of the gradient's largest element, or twice the error
    of a baseline (the reference run in the input precision) where that is larger (flash
    attention's rule). d codebook is compared without the scatter of G but on the scale of the
    whole gradient, the value that was rounded to the dtype."""
    quantize, _ = MODES[mode]
    pairs = {"d z": (lambda r: r[3].double(), want64[3]),
             "d codebook": (lambda r: _without_scatter(r, grad_z_q, quantize), want64[4])}
    for what, (part, whole) in pairs.items():
        scale = whole.abs().max().item() if whole.numel() else 0.0
        atol = max([tol * scale, floor] + [2 * _max_error(part(base), part(want64)) for base in baselines])
        torch.testing.assert_close(part(got).cpu(), part(want64).cpu(), rtol=tol, atol=atol,
                                   msg=lambda m, what=what: f"{what}: {m}")


def _check_against_reference(z, codebook, mode, temperature=0.5, codes_per_tile=0, tol_scale=1.0, floor=0.0):
    quantize, entropy = MODES[mode]
    dtype = z.dtype
    tol = TOL[dtype] * tol_scale
    grad_z_q, grad_entropy = _upstream(z, codebook, mode, temperature)
    reference_fn = lambda a, b: _reference(a, b, temperature)  # noqa: E731
    got = _losses(lambda a, b: _run(a, b, temperature, quantize, entropy, codes_per_tile),
                  z, codebook, mode, grad_z_q, grad_entropy)
    want = _losses(reference_fn, z, codebook, mode, grad_z_q, grad_entropy)
    want64 = _losses(reference_fn, z.double(), codebook.double(), mode, grad_z_q, grad_entropy)
    z_q, idx, ent, _, _ = got

    # Forward: z_q is exactly codebook[idx]; idx matches except where the top-2 logits tie
    # within the rounding of the accumulation dtype.
    assert idx.dtype == torch.int64 and idx.shape == z.shape[:-1]
    assert torch.equal(z_q, codebook[idx])
    logits = z.reshape(-1, z.shape[-1]).double() @ codebook.double().t()
    flat_idx, flat_ref = idx.reshape(-1), want[1].reshape(-1)
    differ = (flat_idx != flat_ref).nonzero().flatten()
    if dtype == torch.float64:
        assert differ.numel() == 0
    for n in differ.tolist():
        gap = (logits[n, flat_idx[n]] - logits[n, flat_ref[n]]).abs().item()
        assert gap <= 1e-5 * logits[n].abs().max().item() + 1e-6, (n, gap)
    if entropy:
        torch.testing.assert_close(ent.double().cpu(), want[2].double().cpu(), atol=tol, rtol=tol)
    # On CUDA the GEMM operands are in the half dtype (d(logits) too, like flash attention's P
    # before P @ V): the baseline there is PyTorch with every tensor in the low precision.
    baselines = [want]
    if z.device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        baselines.append(_losses(lambda a, b: _same_precision_reference(a, b, temperature), z, codebook, mode,
                                 grad_z_q, grad_entropy))
    _assert_grads_match(got, want64, baselines, mode, grad_z_q, tol, floor)


# (N, K, D, codes_per_tile): single code, partial tiles, many tiles, D = 1024; 0 = automatic.
SHAPES = [(1, 1, 1, 0), (7, 13, 5, 4), (13, 257, 17, 64), (130, 2053, 13, 500), (5, 33, 1024, 16)]


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", list(MODES))
def test_matches_reference(device, dtype, shape, mode):
    n, k, d, tile = shape
    z, codebook = _inputs(n, k, d, device, dtype)
    _check_against_reference(z, codebook, mode, codes_per_tile=tile)


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (5, 33, 1024)), (torch.bfloat16, (5, 33, 1024)),
                                         (torch.bfloat16, (13, 257, 17)), (torch.bfloat16, (130, 2053, 13))])
@pytest.mark.parametrize("mode", ["entropy", "both"])
@pytest.mark.parametrize("entropy_factor", [0.0, -1.0], ids=["zeroed", "sign-flipped"])
@pytest.mark.parametrize("what", ["d z", "d codebook"])
def test_checker_rejects_a_wrong_entropy_gradient(dtype, shape, mode, entropy_factor, what):
    # The gradient checker itself, fed the reference's gradients with the entropy part zeroed or
    # sign-flipped: d z and d codebook must each be rejected.
    z, codebook = _inputs(*shape, "cpu", dtype)
    grad_z_q, grad_entropy = _upstream(z, codebook, mode, 0.5)
    reference_fn = lambda a, b: _reference(a, b, 0.5)  # noqa: E731
    want = _losses(reference_fn, z, codebook, mode, grad_z_q, grad_entropy)
    want64 = _losses(reference_fn, z.double(), codebook.double(), mode, grad_z_q, grad_entropy)
    mutant = list(_losses(reference_fn, z, codebook, mode, grad_z_q, grad_entropy * entropy_factor))
    other = 4 if what == "d z" else 3  # keep the other gradient right: each check must fail alone
    mutant[other] = want[other]
    _assert_grads_match(want, want64, [want], mode, grad_z_q, TOL[dtype])
    with pytest.raises(AssertionError, match=what):
        _assert_grads_match(mutant, want64, [want], mode, grad_z_q, TOL[dtype])


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_leading_batch_dims_and_public_api(device, dtype):
    z, codebook = _inputs(5, 37, 8, device, dtype, batch=(2, 3))
    z_q, idx = ops.ibq_quantize(z, codebook)
    assert z_q.shape == z.shape and idx.shape == (2, 3, 5) and z_q.dtype == dtype
    z_q2, idx2, ent = ops.ibq_quantize_with_entropy(z, codebook, temperature=0.1)
    assert torch.equal(z_q2, z_q) and torch.equal(idx2, idx) and ent.shape == () and ent.dtype == dtype
    torch.testing.assert_close(ops.ibq_entropy_loss(z, codebook, temperature=0.1), ent)
    _check_against_reference(z, codebook, "both", temperature=0.1, codes_per_tile=16)


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_duplicate_codes_pick_lowest_index(device, dtype):
    z, codebook = _inputs(6, 20, 4, device, dtype)
    codebook = codebook / codebook.norm(dim=1, keepdim=True)  # then argmax z . C_k of z = 4 C_j is j
    codebook[9] = codebook[2]    # same tile as code 2 (tiles of 8)
    codebook[17] = codebook[2]   # a later tile
    codebook[3] = codebook[12]   # the duplicate in the earlier tile comes first
    z[:3] = codebook[2] * 4
    z[3:] = codebook[12] * 4
    for tile in (0, 8, 1):
        _, idx, _ = _run(z, codebook, 1.0, True, True, tile)
        assert idx[:3].tolist() == [2, 2, 2] and idx[3:].tolist() == [3, 3, 3]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", list(MODES))
def test_huge_magnitudes_stay_finite(device, mode):
    # |logits| ~ 1e4 - 1e5: the online max keeps every exp in range. At T = 0.01 the exponents
    # reach 1e7, so float64 itself only resolves them to ~1e-9: the tolerance says so.
    z, codebook = _inputs(33, 300, 16, device, torch.float64, scale=1e3)
    # The entropy's share of the gradient is 0 in float64 here (saturated softmax): the same ~1e-9.
    _check_against_reference(z, codebook, mode, temperature=0.01, codes_per_tile=64, tol_scale=1e3, floor=1e-9)
    z32, c32 = z.float(), codebook.float()
    z32.requires_grad_(True)
    c32.requires_grad_(True)
    z_q, _, ent = _run(z32, c32, 0.01, True, True, 64)
    (z_q.sum() + ent).backward()
    assert torch.isfinite(ent) and torch.isfinite(z32.grad).all() and torch.isfinite(c32.grad).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("batch", [(0,), (2, 0)])
def test_empty_rows(device, batch):
    codebook = torch.randn(11, 6, device=device, requires_grad=True)
    z = torch.randn((*batch, 6), device=device, requires_grad=True)
    z_q, idx, ent = ops.ibq_quantize_with_entropy(z, codebook)
    assert z_q.shape == z.shape and idx.shape == batch and ent.item() == 0.0
    (z_q.sum() + ent).backward()
    assert z.grad.shape == z.shape and torch.equal(codebook.grad, torch.zeros_like(codebook))
    assert ops.ibq_entropy_loss(z, codebook).item() == 0.0


@pytest.mark.parametrize("mode", ["entropy", "both"])
def test_gradcheck_entropy_float64(mode):
    # The entropy is a true function of (z, codebook); the straight-through z_q is not (its
    # backward is IBQ's surrogate), so it is checked against the reference above instead.
    z, codebook = _inputs(6, 11, 3, "cpu", torch.float64)
    z.requires_grad_(True)
    codebook.requires_grad_(True)
    quantize, entropy = MODES[mode]
    assert torch.autograd.gradcheck(lambda a, b: _run(a, b, 0.7, quantize, entropy, 4)[2], (z, codebook))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", list(MODES))
def test_opcheck_forward(device, mode):
    z, codebook = _inputs(9, 21, 5, device, torch.float32)
    quantize, entropy = MODES[mode]
    torch.library.opcheck(torch.ops.dcae_ext.ibq_forward,
                          (z.requires_grad_(True), codebook.requires_grad_(True), 0.5, quantize, entropy, 8))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", list(MODES))
def test_opcheck_backward(device, mode):
    z, codebook = _inputs(9, 21, 5, device, torch.float32)
    quantize, entropy = MODES[mode]
    _, idx, _, row_stats, soft, coef, plan = torch.ops.dcae_ext.ibq_forward(z, codebook, 0.5, quantize, entropy, 8)
    grad_z_q = torch.randn_like(z) if quantize else None
    grad_entropy = torch.tensor(0.3, device=device) if entropy else None
    torch.library.opcheck(torch.ops.dcae_ext._ibq_backward,
                          (grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft, coef, plan, 0.5, 8))


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_matches_eager(device):
    z, codebook = _inputs(10, 40, 8, device, torch.float32, batch=(2,))

    def step(z, codebook):
        z_q, idx, ent = ops.ibq_quantize_with_entropy(z * 1.5, codebook, 0.1)
        return (z_q - z).square().mean() + 0.05 * ent, idx

    assert_compiled_step_matches_eager(step, z, codebook)


_PEAK_RSS_SCRIPT = """
import sys, torch
from dcae_ext.ops import reference
from dcae_ext.ops.ibq import _run
n, k, d, tile, fused = (int(a) for a in sys.argv[1:])
def step(n, k):
    z = torch.randn(n, d, requires_grad=True)
    c = torch.randn(k, d, requires_grad=True)
    if fused:
        z_q, _, ent = _run(z, c, 0.01, True, True, tile)
    else:
        z_q, ent = reference.ibq_quantize(z, c)[0], reference.ibq_entropy_loss(z, c, 0.01)
    (z_q.sum() + ent).backward()
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
step(4, 8)  # load every library before the baseline
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status_kb("VmRSS")
step(n, k)
print((status_kb("VmHWM") - before) / 1024)
"""


def _peak_rss_mb(n, k, d, tile, fused):
    # Peak resident memory of one fwd+bwd in a fresh process: sees every allocation, also the
    # temporaries inside the compiled op that a profiler's per-op accounting nets out.
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, *map(str, (n, k, d, tile, int(fused)))],
                         capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
def test_peak_memory_is_linear_in_rows_plus_codes():
    n, k, d, tile = 256, 32768, 16, 1024
    fused_mb = _peak_rss_mb(n, k, d, tile, fused=True)
    reference_mb = _peak_rss_mb(n, k, d, tile, fused=False)
    # O((N + K) D): inputs, grads, upcasts and saved tensors (a few copies each), plus the
    # bounded slabs (3 x N x tile).
    bound_mb = (8 * (n + k) * d + 3 * n * tile) * 4 / 2**20
    full_logits_mb = n * k * 4 / 2**20
    assert reference_mb > full_logits_mb  # the measurement sees N x K tensors when they exist
    assert fused_mb < bound_mb < full_logits_mb, (fused_mb, bound_mb, reference_mb)
