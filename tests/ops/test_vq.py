"""ops.vq_quantize, the standard VQ step on the compiled nearest-code search (docs/vq.md), against the
textbook cdist + one_hot reference: indices, z_q, losses, EMA statistics, gradients, ties, empty
input, every dtype, gradcheck, compile, bad arguments, and no N x K allocation."""
import pytest
import torch

from dcae_ext import ops
from dcae_ext.bench.memory import tracked_peak_mb
from dcae_ext.ops import reference
from dcae_ext.testing import TOLERANCES, assert_compiled_step_matches_eager, device_dtypes, devices
from dcae_ext.testing import ibq_inputs as _inputs

METRICS = ["l2", "dot", "cosine"]


def _step(z, codebook, grad, **options):
    """The op's outputs and the gradients of sum(z_q * grad) + loss for z and the codebook."""
    z, codebook = z.detach().clone().requires_grad_(True), codebook.detach().clone().requires_grad_(True)
    out = ops.vq_quantize(z, codebook, ema_statistics=True, **options)
    ((out.z_q * grad).sum() + out.loss).backward()
    return out, z.grad, codebook.grad


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(7, 13, 5), (130, 2053, 13), (64, 33, 256)])
def test_matches_the_textbook_reference(device, dtype, metric, shape):
    n, k, d = shape
    z, codebook = _inputs(n, k, d, device, dtype, batch=(2,))
    z = z * 1.5
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out, z_grad, codebook_grad = _step(z, codebook, grad.to(device, dtype), metric=metric, commitment_weight=0.3,
                                       exact_index=True)
    # the float64 reference on the same values, with the same (float64 argmax) index
    want, want_z_grad, want_codebook_grad = _reference_step(z, codebook, grad, metric, 0.3)
    assert torch.equal(out.indices.cpu(), want[1])
    assert out.indices.shape == z.shape[:-1] and out.z_q.dtype == dtype
    assert torch.equal(out.z_q, codebook[out.indices])  # exactly the codes, not z + (c - z)
    scale = want[2].abs().item() + 1
    tol = TOLERANCES[dtype]
    for got, expected in ((out.codebook_loss, want[2]), (out.commitment_loss, want[3])):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double().cpu(), expected, atol=tol["atol"] * scale, rtol=tol["rtol"])
    assert torch.equal(out.counts.cpu().double(), want[4])
    assert out.sums.dtype == reference.accumulation_dtype(dtype)
    torch.testing.assert_close(out.sums.double().cpu(), want[5], atol=1e-5 * z.abs().max().item() * n, rtol=1e-5)
    grad_scale = 1 + want_z_grad.abs().max().item()
    torch.testing.assert_close(z_grad.double().cpu(), want_z_grad, atol=tol["atol"] * grad_scale,
                               rtol=tol["rtol"] * 4)
    torch.testing.assert_close(codebook_grad.double().cpu(), want_codebook_grad,
                               atol=tol["atol"] * (1 + want_codebook_grad.abs().max().item()), rtol=tol["rtol"] * 4)
    # the default path: the op's own float32 argmax, the same as nearest_code's
    assert torch.equal(ops.vq_quantize(z, codebook, metric=metric).indices, ops.nearest_code(z, codebook, metric))


def _reference_step(z, codebook, grad, metric, weight):
    z = z.detach().cpu().double().requires_grad_(True)
    codebook = codebook.detach().cpu().double().requires_grad_(True)
    want = reference.vq_quantize(z, codebook, metric, weight, True, exact_index=True)
    ((want[0] * grad).sum() + want[2] + want[3]).backward()
    return [t.detach() for t in want], z.grad, codebook.grad


def test_the_gradients_are_the_textbook_formulas():
    # dz = G + 2 w (z - c) / numel (straight-through + commitment), dC_k = sum_{n: idx=k} 2 (c - z_n) / numel
    z, codebook = _inputs(9, 6, 4, "cpu", torch.float64)
    grad = torch.randn_like(z)
    out, z_grad, codebook_grad = _step(z, codebook, grad, commitment_weight=0.25)
    codes = codebook[out.indices]
    torch.testing.assert_close(z_grad, grad + 0.5 * (z - codes) / z.numel())
    want = torch.zeros_like(codebook).index_add_(0, out.indices, 2 * (codes - z) / z.numel())
    torch.testing.assert_close(codebook_grad, want)


def test_cdist_reference_agrees_with_the_search_away_from_ties():
    z, codebook = _inputs(300, 500, 16, "cpu", torch.float32)
    got = ops.vq_quantize(z, codebook).indices
    assert torch.equal(got, reference.vq_quantize(z, codebook)[1])
    assert torch.equal(got, torch.cdist(z.double(), codebook.double()).argmin(dim=1))


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(metric):
    # Each loss against the input it trains, the other held fixed: there the stop-gradients change
    # nothing and the gradient is the true derivative (z_q's straight-through gradient is by design
    # not: test_the_gradients_are_the_textbook_formulas checks it)
    z, codebook = _inputs(6, 10, 3, "cpu", torch.float64)
    z_only, codebook_only = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c: ops.vq_quantize(z, c, metric=metric).codebook_loss, (codebook_only,))
    assert torch.autograd.gradcheck(
        lambda x: ops.vq_quantize(x, codebook, metric=metric, commitment_weight=0.7).commitment_loss, (z_only,))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
def test_duplicated_codes_pick_and_count_the_lowest_index(device, metric):
    z, codebook = _inputs(6, 40, 8, device, torch.float32)
    codebook = codebook / codebook.norm(dim=1, keepdim=True)
    codebook[9] = codebook[2]
    codebook[33] = codebook[2]
    z[:] = codebook[2] + 0.01 * z
    for exact_index in (False, True):
        out = ops.vq_quantize(z, codebook, metric=metric, ema_statistics=True, exact_index=exact_index)
        assert out.indices.tolist() == [2] * 6
        assert out.counts[2].item() == 6 and out.counts.sum().item() == 6 and out.counts[[9, 33]].eq(0).all()
        torch.testing.assert_close(out.sums[2], z.sum(0))


@pytest.mark.parametrize("device", devices())
def test_empty_input(device):
    z, codebook = _inputs(0, 12, 5, device, torch.float32, batch=(3,))
    z.requires_grad_(True)
    codebook.requires_grad_(True)
    out = ops.vq_quantize(z, codebook, ema_statistics=True)
    assert out.z_q.shape == (3, 0, 5) and out.indices.shape == (3, 0)
    assert out.codebook_loss.item() == 0 and out.commitment_loss.item() == 0
    assert out.counts.eq(0).all() and out.sums.eq(0).all() and out.sums.shape == (12, 5)
    (out.z_q.sum() + out.loss).backward()
    assert codebook.grad.eq(0).all() and z.grad.shape == z.shape
    want = reference.vq_quantize(z, codebook, "l2", 0.25, True)
    assert want[2].item() == 0 and want[1].shape == (3, 0)


def test_nan_rows_give_nan_outputs_not_a_crash():
    z, codebook = _inputs(4, 9, 3, "cpu", torch.float32)
    z[1] = float("nan")
    out = ops.vq_quantize(z, codebook, ema_statistics=True)
    assert out.z_q[1].isnan().all() and out.z_q[[0, 2, 3]].isfinite().all()
    assert out.codebook_loss.isnan()


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_matches_eager(device):
    z, codebook = _inputs(10, 40, 8, device, torch.float32, batch=(2,))

    def step(z, codebook):
        out = ops.vq_quantize(z * 1.5, codebook, ema_statistics=True)
        return (out.z_q.square().sum() + out.loss, out.indices, out.counts, out.sums)

    assert_compiled_step_matches_eager(step, z, codebook)


def test_reference_mode_runs_the_reference():
    z, codebook = _inputs(20, 30, 4, "cpu", torch.float32)
    fast = ops.vq_quantize(z, codebook, ema_statistics=True)
    previous = ops.use_reference(True)
    try:
        slow = ops.vq_quantize(z, codebook, ema_statistics=True)
    finally:
        ops.use_reference(previous)
    assert torch.equal(fast.indices, slow.indices)
    for got, want in zip(fast, slow):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
def test_bad_arguments_name_the_argument(reference_mode):
    z, codebook = _inputs(4, 6, 3, "cpu", torch.float32)
    previous = ops.use_reference(reference_mode)
    try:
        for options, name in ((dict(commitment_weight="0.25"), "commitment_weight"),
                              (dict(ema_statistics=1), "ema_statistics"), (dict(metric="euclidean"), "metric"),
                              (dict(exact_index="yes"), "exact_index")):
            with pytest.raises(ValueError, match=f"argument '{name}'"):
                ops.vq_quantize(z, codebook, **options)
        with pytest.raises(ValueError, match="argument 'codebook'"):
            ops.vq_quantize(z, codebook[:, :2])
        with pytest.raises(ValueError, match="argument 'codebook'"):
            ops.vq_quantize(z, codebook.double())
    finally:
        ops.use_reference(previous)


def test_no_rows_by_codes_tensor_is_allocated():
    # N x K float32 would be 256 MB here. The search holds a fixed workspace of its own (codebook
    # tiles, about 21 MB on CPU); the rest of the step (gather, losses, backward, statistics) adds
    # O((N + K) D) on top of it.
    z, codebook = _inputs(2048, 32768, 8, "cpu", torch.float32)
    z.requires_grad_(True)
    codebook.requires_grad_(True)

    def step():
        out = ops.vq_quantize(z, codebook, ema_statistics=True)
        torch.autograd.grad(out.z_q.sum() + out.loss, (z, codebook))

    def search():
        ops.nearest_code(z, codebook, "l2")

    step()
    search()
    rows_plus_codes_mb = (2048 + 32768) * 8 * 4 / 2**20
    assert tracked_peak_mb(step) < tracked_peak_mb(search) + 4 * rows_plus_codes_mb
    assert tracked_peak_mb(step) < 2048 * 32768 * 4 / 2**20 / 4
