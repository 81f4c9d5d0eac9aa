"""The IBQ quantizer and entropy loss written from the paper's equations (arXiv 2412.02692,
section 3, and the official implementation's entropy term), independently of
dcae_ext.ops.reference: the kernel and the reference are both tested against it.

For a row z_n and codebook C (K x D):
    l_nk = z_n . C_k,   idx_n = argmax_k l_nk,   s_n = softmax(l_n)
    z_q_n = sum_k (onehot(idx_n)_k - sg(s_nk) + s_nk) C_k          (index backpropagation)
    q_n = softmax(l_n / T),   log q_nk = l_nk / T - logsumexp_j(l_nj / T)
    entropy = mean_n (-sum_k q_nk log q_nk) - (-sum_k qbar_k log(qbar_k + 1e-5)),  qbar = mean_n q_n
"""
import pytest
import torch

from dcae_ext.ops import reference
from dcae_ext.ops.ibq import _run

ENTROPY_EPS = 1e-5


def paper_ibq(z, codebook, temperature):
    """(z_q, idx, entropy) row by row, as the equations above read."""
    z_q_rows, indices, row_entropies, row_probs = [], [], [], []
    for z_n in z.unbind(0):
        logits = torch.einsum("kd,d->k", codebook, z_n)
        index = int(torch.max(logits, dim=0).indices)
        hard = torch.zeros_like(logits)
        hard[index] = 1.0
        soft = torch.exp(logits - torch.logsumexp(logits, dim=0))
        one_hot = hard - soft.detach() + soft
        z_q_rows.append(torch.einsum("k,kd->d", one_hot, codebook))
        indices.append(index)
        log_q = logits / temperature - torch.logsumexp(logits / temperature, dim=0)
        q = torch.exp(log_q)
        row_entropies.append(-(q * log_q).sum())
        row_probs.append(q)
    mean_q = torch.stack(row_probs).mean(dim=0)
    codebook_entropy = -(mean_q * torch.log(mean_q + ENTROPY_EPS)).sum()
    entropy = torch.stack(row_entropies).mean() - codebook_entropy
    return torch.stack(z_q_rows), torch.tensor(indices), entropy


def _inputs(n, k, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n, d), generator=gen, dtype=torch.float64)
    codebook = torch.randn((k, d), generator=gen, dtype=torch.float64)
    return z.to(dtype), codebook.to(dtype)


def _value_and_grads(fn, z, codebook, grad_z_q, grad_entropy):
    z = z.detach().clone().requires_grad_(True)
    codebook = codebook.detach().clone().requires_grad_(True)
    z_q, idx, entropy = fn(z, codebook)
    loss = (z_q * grad_z_q).sum() + entropy * grad_entropy
    grad_z, grad_codebook = torch.autograd.grad(loss, (z, codebook))
    return z_q.detach(), idx, entropy.detach(), grad_z, grad_codebook


IMPLEMENTATIONS = {
    "kernel": lambda T, tile: lambda z, c: _run(z, c, T, True, True, tile),
    "reference": lambda T, tile: lambda z, c: (*reference.ibq_quantize(z, c), reference.ibq_entropy_loss(z, c, T)),
}
# Relative to each quantity's own largest element.
PRECISION = {torch.float64: 1e-12, torch.float32: 2e-5}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,temperature,tile", [((7, 13, 5), 0.5, 4), ((40, 300, 8), 0.1, 64),
                                                    ((16, 64, 32), 0.01, 0)])
def test_matches_the_paper_equations(implementation, dtype, shape, temperature, tile):
    z, codebook = _inputs(*shape, dtype)
    gen = torch.Generator().manual_seed(1)
    grad_z_q = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(dtype)
    # The entropy gradient weighted to the size of the quantize gradient, so neither hides the other.
    grad_entropy = 10.0 / temperature
    got = _value_and_grads(IMPLEMENTATIONS[implementation](temperature, tile), z, codebook, grad_z_q, grad_entropy)
    # The equations evaluated in float64 on the same (rounded) inputs: the float32 run is judged
    # by its own rounding error, not by the float32 error of this loop.
    want = _value_and_grads(lambda a, b: paper_ibq(a, b, temperature), z.double(), codebook.double(),
                            grad_z_q.double(), grad_entropy)
    tol = PRECISION[dtype]
    assert torch.equal(got[1], want[1])
    for name, a, b in zip(("z_q", "entropy", "d z", "d codebook"), got[:1] + got[2:], want[:1] + want[2:]):
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * b.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_per_sample_entropy_is_exact_not_eps_smoothed():
    # -sum p log(p + 1e-5) differs from the exact -sum p log p by ~1e-4 here: far above float64
    # precision, so the test above tells the two apart. This pins the size of that gap.
    z, codebook = _inputs(40, 300, 8, torch.float64)
    q = (reference.ibq_logits(z, codebook) / 0.1).softmax(dim=-1)
    smoothed = -(q * torch.log(q + ENTROPY_EPS)).sum(dim=-1).mean()
    exact = -(q * q.log()).sum(dim=-1).mean()
    assert (smoothed - exact).abs() > 1e-6
    entropy = _run(z, codebook, 0.1, False, True, 0)[2]
    mean_q = q.mean(dim=0)
    codebook_entropy = -(mean_q * torch.log(mean_q + ENTROPY_EPS)).sum()
    torch.testing.assert_close(entropy, exact - codebook_entropy, rtol=1e-12, atol=1e-12)
