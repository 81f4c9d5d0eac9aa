"""The differentiable IBQ ops with the "l2" and "cosine" scores (docs/ibq.md, "Distance metrics"):
values and gradients against the reference (the norm term's and the normalisation's gradients
included), gradcheck of the entropy, opcheck and torch.compile."""
import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.ops.ibq import _run
from dcae_ext.testing import (assert_compiled_step_matches_eager, codebook_grad_without_scatter, device_dtypes,
                              devices)
from dcae_ext.testing import ibq_inputs as _inputs
from dcae_ext.testing import ibq_poisoned_codes, ibq_poisoned_rows

METRICS = ["l2", "cosine"]
MODES = {"quantize": (True, False), "entropy": (False, True), "both": (True, True)}
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _reference(metric, temperature):
    def run(z, codebook):
        z_q, idx = reference.ibq_quantize(z, codebook, metric)
        return z_q, idx, reference.ibq_entropy_loss(z, codebook, temperature, metric)
    return run


def _results(fn, z, codebook, mode, grad_z_q, grad_entropy):
    """(z_q, idx, entropy, d z, d codebook) of <z_q, G> + gE * entropy."""
    z = z.detach().clone().requires_grad_(True)
    codebook = codebook.detach().clone().requires_grad_(True)
    z_q, idx, ent = fn(z, codebook)
    quantize, entropy = MODES[mode]
    loss = (z_q.double() * grad_z_q).sum() if quantize else 0.0
    if entropy:
        loss = loss + grad_entropy * ent.double()
    return (z_q.detach(), idx, ent.detach(), *torch.autograd.grad(loss, (z, codebook)))


def _check(z, codebook, metric, mode, temperature=0.5, codes_per_tile=0, gemm_dtype=None, tol=None):
    quantize, entropy = MODES[mode]
    tol = tol or TOL[z.dtype]
    grad_z_q = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(z.device)
    grad_entropy = 5.0  # the entropy's gradient is small at equal weight (test_ibq.py's _upstream)
    got = _results(lambda a, b: _run(a, b, temperature, quantize, entropy, codes_per_tile, gemm_dtype, metric),
                   z, codebook, mode, grad_z_q, grad_entropy)
    want = _results(_reference(metric, temperature), z.double(), codebook.double(), mode, grad_z_q, grad_entropy)
    z_q, idx, ent = got[:3]
    assert torch.equal(z_q, codebook[idx])
    exact = reference.nearest_code(z, codebook, metric, exact_index=True)
    if gemm_dtype is not None or z.dtype == torch.float64:
        assert torch.equal(idx.cpu(), exact.cpu())
    if entropy:
        torch.testing.assert_close(ent.double().cpu(), want[2].cpu(), rtol=tol, atol=tol)
    # d codebook without the scatter of G (idx may differ at near-ties), judged on the scale of the
    # whole gradient: the value that was rounded to the dtype
    parts = {"d z": (lambda r: r[3].double(), want[3]),
             "d codebook": (lambda r: codebook_grad_without_scatter(r[4], r[1], grad_z_q) if quantize
                            else r[4].double(), want[4])}
    for what, (part, whole) in parts.items():
        scale = whole.abs().max().item()
        torch.testing.assert_close(part(got).cpu(), part(want).cpu(), rtol=tol, atol=tol * scale,
                                   msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", [(7, 13, 5, 4), (130, 300, 13, 64), (5, 33, 256, 16)])
def test_matches_reference(device, dtype, metric, mode, shape):
    n, k, d, tile = shape
    z, codebook = _inputs(n, k, d, device, dtype)
    # a spread of code lengths, and rows longer than the codes: the norm terms matter
    codebook = codebook * torch.linspace(0.5, 2.0, k, device=device, dtype=dtype)[:, None]
    temperature = 0.05 if metric == "cosine" else 0.5  # cosine scores lie in [-1, 1]
    _check(z * 2, codebook, metric, mode, temperature, tile)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("gemm_dtype", [torch.bfloat16, torch.float16])
def test_rounded_operands_keep_the_index_exact_and_the_gradients_close(metric, gemm_dtype):
    z, codebook = _inputs(40, 200, 16, "cpu", torch.float32)
    _check(z * 2, codebook, metric, "both", 0.5, 32, gemm_dtype, tol=4e-2)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mode", ["entropy", "both"])
def test_gradcheck_entropy_float64(metric, mode):
    # the entropy is a true function of (z, codebook), its norm terms included
    z, codebook = _inputs(6, 11, 3, "cpu", torch.float64)
    codebook[4] *= 3.0
    quantize, entropy = MODES[mode]
    assert torch.autograd.gradcheck(lambda a, b: _run(a, b, 0.7, quantize, entropy, 4, None, metric)[2],
                                    (z.requires_grad_(True), codebook.requires_grad_(True)))


@pytest.mark.parametrize("metric", METRICS)
def test_z_q_gradient_is_that_of_the_scores_softmax_float64(metric):
    # z_q's value is C[idx]; its gradient is that of softmax(scores) @ sg(C), the norm terms'
    # gradients included, plus G scattered into the rows idx of d codebook.
    z, codebook = _inputs(5, 9, 3, "cpu", torch.float64)
    z, codebook = z.requires_grad_(True), codebook.requires_grad_(True)
    upstream = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z_q, idx, _ = _run(z, codebook, 1.0, True, False, 4, None, metric)
    soft = reference.ibq_logits(z, codebook, metric).softmax(-1) @ codebook.detach()
    want = torch.autograd.grad((soft * upstream).sum(), (z, codebook))
    got = torch.autograd.grad((z_q * upstream).sum(), (z, codebook))
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    scatter = torch.zeros_like(codebook).index_add(0, idx, upstream)
    torch.testing.assert_close(got[1] - scatter, want[1], rtol=1e-10, atol=1e-12)


def test_cosine_normalises_z_too():
    # the softmax is over normalize(z) . normalize(c): scaling z leaves the loss unchanged
    z, codebook = _inputs(8, 30, 6, "cpu", torch.float64)
    ent = ops.ibq_entropy_loss(z, codebook, 0.1, metric="cosine")
    torch.testing.assert_close(ops.ibq_entropy_loss(z * 7.0, codebook * 0.25, 0.1, metric="cosine"), ent)
    assert not torch.allclose(ops.ibq_entropy_loss(z * 7.0, codebook, 0.1, metric="l2"),
                              ops.ibq_entropy_loss(z, codebook, 0.1, metric="l2"))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
def test_zero_rows_and_codes(device, metric):
    # |x| < eps: x / eps, as torch.nn.functional.normalize; gradients stay finite
    z, codebook = _inputs(6, 10, 4, device, torch.float64)
    z[2] = 0.0
    codebook[3] = 0.0
    _check(z, codebook, metric, "both", 0.5, 4)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("make", [ibq_poisoned_rows, ibq_poisoned_codes])
def test_nan_and_inf_follow_torch_argmax(device, metric, make):
    # docs/ibq.md "NaN and inf", for the metric's scores: idx is torch.argmax of the reference's
    # scores, a row whose softmax is undefined gets a NaN z_q, the entropy is NaN
    z, codebook = make(device, torch.float32)
    scores = reference.ibq_logits(z, codebook, metric)
    for exact_index in (False, True):
        z_q, idx, ent = _run(z, codebook, 0.5, True, True, 4, None, metric, exact_index)
        assert torch.equal(idx, scores.argmax(-1)), exact_index
        undefined = ~torch.logsumexp(scores, dim=-1).isfinite()
        assert torch.equal(z_q.isnan().all(-1), undefined) and torch.equal(z_q[~undefined], codebook[idx[~undefined]])
        assert ent.isnan()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mode", list(MODES))
def test_opcheck(device, metric, mode):
    z, codebook = _inputs(9, 21, 5, device, torch.float32)
    quantize, entropy = MODES[mode]
    torch.library.opcheck(torch.ops.dcae_ext.ibq_forward, (z.requires_grad_(True), codebook.requires_grad_(True), 0.5,
                                                           quantize, entropy, 8, None, metric, True))
    z, codebook = z.detach(), codebook.detach()
    _, idx, _, row_stats, soft, coef, plan = torch.ops.dcae_ext.ibq_forward(z, codebook, 0.5, quantize, entropy, 8,
                                                                            None, metric)
    grad_z_q = torch.randn_like(z) if quantize else None
    grad_entropy = torch.tensor(0.3, device=device) if entropy else None
    torch.library.opcheck(torch.ops.dcae_ext._ibq_backward,
                          (grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft, coef, plan, 0.5, 8, metric))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
def test_compile_fullgraph_matches_eager(device, metric):
    z, codebook = _inputs(10, 40, 8, device, torch.float32, batch=(2,))

    def step(z, codebook):
        z_q, idx, ent = ops.ibq_quantize_with_entropy(z * 1.5, codebook, 0.1, metric=metric, exact_index=True)
        return (z_q - z).square().mean() + 0.05 * ent, idx

    assert_compiled_step_matches_eager(step, z, codebook)
