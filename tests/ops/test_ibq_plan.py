"""How the IBQ op runs its GEMMs (docs/ibq.md, "Saved for the backward" and "Exact index with
half-precision GEMMs"): the forward's choice of operands travels to the backward (gemm_plan), which
neither checks the inputs' range again nor reads the matmul flags; an entropy-only call scans for
no index; the backward's row term D_n uses the G its GEMMs see; the full-row fallback warns."""
import os
import subprocess
import sys

import pytest
import torch

from dcae_ext.ops.ibq import _run
from dcae_ext.testing import ibq_inputs as _inputs


def _aten_calls(fn):
    """The names of the ATen ops `fn()` dispatches (those inside the compiled op included)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def _forward(z, codebook, gemm_dtype, quantize=True, entropy=True, metric="dot"):
    return torch.ops.dcae_ext.ibq_forward(z, codebook, 0.5, quantize, entropy, 16, gemm_dtype, metric)


def test_the_plan_records_the_operands():
    z, codebook = _inputs(20, 50, 6, "cpu", torch.float32)
    plan = _forward(z, codebook, torch.bfloat16)[-1]
    assert plan.device.type == "cpu" and plan.dtype == torch.int64
    plain, rounded = _forward(z, codebook, None)[-1].tolist(), plan.tolist()
    assert plain[1] == -1 and rounded[1] != -1 and rounded[0] == plain[0]  # CPU: float32, rounded through bf16
    beyond_fp16 = codebook * 1e5  # fp16 cannot hold it: exact float32 operands, and the plan says so
    assert _forward(z, beyond_fp16, torch.float16)[-1].tolist() == plain


@pytest.mark.parametrize("gemm_dtype", [torch.bfloat16, torch.float16])
def test_backward_follows_the_plan_without_a_range_check(gemm_dtype):
    # The backward recomputes the forward's logits with the forward's operands. Before, it decided
    # them again: a range check of z and the codebook (a host sync on CUDA) and the matmul flags.
    z, codebook = _inputs(20, 50, 6, "cpu", torch.float32)
    _, idx, _, row_stats, soft, coef, plan = _forward(z, codebook, gemm_dtype)
    grad_z_q, grad_entropy = torch.randn_like(z), torch.tensor(0.7)

    def backward(with_plan):
        return torch.ops.dcae_ext._ibq_backward(grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft, coef,
                                                with_plan, 0.5, 16)

    calls = _aten_calls(lambda: backward(plan))
    assert "aten::linalg_vector_norm" not in calls and "aten::stack" not in calls, calls  # no range check
    # the plan decides: exact float32 operands give other gradients than the forward's rounded ones
    exact_plan = _forward(z, codebook, None)[-1]
    rounded, exact = backward(plan), backward(exact_plan)
    assert not torch.allclose(rounded[0], exact[0], rtol=1e-5, atol=1e-6)
    # and autograd hands the plan over: its gradients are the rounded operands'
    z_leaf, codebook_leaf = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
    z_q, _, ent = _run(z_leaf, codebook_leaf, 0.5, True, True, 16, gemm_dtype)
    torch.autograd.backward([z_q, ent], [grad_z_q, grad_entropy])
    torch.testing.assert_close(z_leaf.grad, rounded[0])
    torch.testing.assert_close(codebook_leaf.grad, rounded[1])


@pytest.mark.parametrize("bad,match", [
    (lambda plan: plan.double(), "gemm_plan"),
    (lambda plan: plan[:2], "gemm_plan"),
    (lambda plan: torch.tensor([int(plan[0]), 99, 0]), "gemm_plan"),
    (lambda plan: torch.tensor([int(plan[0]), -1, 1]), "gemm_plan"),  # TF32 is CUDA's
    (lambda plan: plan.int(), "gemm_plan"),
])
def test_backward_rejects_a_bad_plan(bad, match):
    z, codebook = _inputs(9, 21, 5, "cpu", torch.float32)
    _, idx, _, row_stats, soft, coef, plan = _forward(z, codebook, torch.bfloat16)
    with pytest.raises(ValueError, match=f"argument '{match}'"):
        torch.ops.dcae_ext._ibq_backward(torch.randn_like(z), None, z, codebook, idx, row_stats, soft, coef,
                                         bad(plan), 0.5, 16)


def _near_copies(seed=0):
    """Rows whose bf16 logits cannot tell 5 near-copies of a code apart: every row is re-ranked."""
    gen = torch.Generator().manual_seed(seed)
    bases = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    copies = bases.repeat_interleave(5, 0) * (1 + 2**-7 * torch.randn(30, 16, generator=gen, dtype=torch.float64))
    codebook = torch.cat([copies, 0.3 * torch.randn(60, 16, generator=gen, dtype=torch.float64)])
    z = bases.repeat_interleave(3, 0) + 0.05 * torch.randn(18, 16, generator=gen, dtype=torch.float64)
    return z.float(), codebook.float()


def test_entropy_only_call_skips_the_candidate_scan_and_the_rerank():
    z, codebook = _near_copies()
    rerank_ops = {"aten::bmm", "aten::index_copy_"}
    # the same inputs re-rank when an index is wanted (so the absence below means something)
    assert rerank_ops <= _aten_calls(lambda: _forward(z, codebook, torch.bfloat16, True, True))
    assert rerank_ops <= _aten_calls(lambda: _forward(z, codebook, torch.bfloat16, False, False))
    entropy_only = _aten_calls(lambda: _forward(z, codebook, torch.bfloat16, False, True))
    assert not rerank_ops & entropy_only, entropy_only
    # the value is unchanged: the entropy never used the index
    torch.testing.assert_close(_forward(z, codebook, torch.bfloat16, False, True)[2],
                               _forward(z, codebook, torch.bfloat16, True, True)[2])


@pytest.mark.parametrize("gemm_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_rounded_upstream_gradient_keeps_the_softmax_invariant_direction_free(gemm_dtype, metric):
    # Every code's last coordinate is 1, so z's last coordinate adds the same amount to every
    # logit of its row: the softmax, hence the loss, does not depend on it, and d z there is
    # sum_k dL_nk = G_n . soft_n - D_n = 0 when D_n is taken from the G of g = G C^T. With G
    # rounded for g and D_n from the unrounded G, this was ~1e-3 of d z's scale.
    z, codebook = _inputs(24, 80, 8, "cpu", torch.float32)
    codebook[:, -1] = 1.0
    z, codebook = z.requires_grad_(True), codebook.requires_grad_(True)
    z_q, _, _ = _run(z, codebook, 1.0, True, False, 16, gemm_dtype, metric)
    grad_z_q = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    (grad_z,) = torch.autograd.grad(z_q, z, grad_z_q)
    scale = grad_z.abs().max().item()
    assert grad_z[:, -1].abs().max().item() <= 1e-5 * scale, grad_z[:, -1]


_WARNING_SCRIPT = """
import torch
from dcae_ext import ops
gen = torch.Generator().manual_seed(0)
base = torch.randn(4, 16, generator=gen)
codebook = torch.cat([base.repeat_interleave(24, 0) * (1 + 2**-9 * torch.randn(96, 16, generator=gen)),
                      0.2 * torch.randn(40, 16, generator=gen)])
z = base.repeat_interleave(8, 0) + 0.01 * torch.randn(32, 16, generator=gen)
for _ in range(3):
    idx = ops.nearest_code(z, codebook, gemm_dtype=torch.bfloat16)
assert torch.equal(idx, ops.nearest_code(z, codebook, exact_index=True))
"""


def test_full_row_fallback_warns_once_with_the_share_of_rows():
    # 24 near-copies per direction, more than the 16 candidates: every row is searched in full.
    # The compiled library warns through c10 (stderr), once per process.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stderr = subprocess.run([sys.executable, "-c", _WARNING_SCRIPT], capture_output=True, text=True, env=env,
                            check=True).stderr
    assert stderr.count("dcae_ext: nearest code:") == 1, stderr
    assert "32 of 32 rows (100%)" in stderr and "float64" in stderr and "once per process" in stderr, stderr


@pytest.fixture
def cuda_matmul_settings():
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cuda.matmul.allow_fp16_accumulation)
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cuda.matmul.allow_fp16_accumulation = saved


@pytest.mark.cuda
def test_backward_keeps_the_forwards_tf32_setting_on_cuda(cuda_matmul_settings):
    # The flags changed between forward and backward: the backward still recomputes TF32 logits
    # (those its saved log-sum-exp came from), and leaves the new setting in place afterwards.
    z, codebook = _inputs(64, 512, 32, "cuda", torch.float32)

    def grads(change_before_backward):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        z_leaf, codebook_leaf = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
        z_q, _, ent = _run(z_leaf, codebook_leaf, 0.1, True, True, 128)
        if change_before_backward:
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        (z_q.sum() + ent).backward()
        return z_leaf.grad, codebook_leaf.grad

    want = grads(False)
    got = grads(True)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
