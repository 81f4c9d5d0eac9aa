import pytest
import torch

from dcae_ext import ops
from dcae_ext.models.ibq import quantizer as quantizer_module
from dcae_ext.models.ibq.quantizer import IBQuantizer, code_statistics, search_gemm_dtype
from dcae_ext.ops import reference


def _manual_loss(z_rows, codebook, beta, beta_on_codebook, entropy_weight, temperature):
    """SEED-Voken's loss written out with the reference op, rows (N, D)."""
    z_q, idx = reference.ibq_quantize(z_rows, codebook)
    hard = codebook[idx]
    commitment = ((hard.detach() - z_rows) ** 2).mean()
    codebook_term = ((hard - z_rows.detach()) ** 2).mean()
    if beta_on_codebook:
        codebook_term = beta * codebook_term
    else:
        commitment = beta * commitment
    entropy = reference.ibq_entropy_loss(z_rows, codebook, temperature)
    return ((z_q - z_rows) ** 2).mean() + commitment + codebook_term + entropy_weight * entropy


@pytest.mark.parametrize("beta_on_codebook", [True, False])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.05])
def test_loss_and_gradients_match_the_written_out_formula(beta_on_codebook, entropy_weight):
    torch.manual_seed(0)
    quantizer = IBQuantizer(37, 8, beta=0.25, entropy_weight=entropy_weight,
                            beta_on_codebook_term=beta_on_codebook).double()
    z = torch.randn(2, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    out = quantizer(z)
    out.loss.backward()
    grads = (z.grad.clone(), quantizer.codebook.grad.clone())

    z2 = z.detach().clone().requires_grad_(True)
    codebook = quantizer.codebook.detach().clone().requires_grad_(True)
    rows = z2.movedim(1, -1).reshape(-1, 8)
    expected = _manual_loss(rows, codebook, 0.25, beta_on_codebook, entropy_weight, 0.01)
    expected.backward()
    # the quantizer runs in float32 inside, whatever the parameter dtype
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], z2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], codebook.grad, rtol=1e-4, atol=1e-6)


def test_beta_flag_moves_the_weight_between_terms():
    torch.manual_seed(1)
    z = torch.randn(64, 4)
    code = IBQuantizer(16, 4, beta=0.25, entropy_weight=0.0, beta_on_codebook_term=True)
    paper = IBQuantizer(16, 4, beta=0.25, entropy_weight=0.0, beta_on_codebook_term=False)
    paper.load_state_dict(code.state_dict())
    a, b = code(z), paper(z)
    torch.testing.assert_close(a.codebook_loss, 0.25 * b.codebook_loss)
    torch.testing.assert_close(b.commitment_loss, 0.25 * a.commitment_loss)
    torch.testing.assert_close(a.loss, b.loss)  # same value: the terms are equal in the forward


def test_shapes_indices_and_lookup_channels_first():
    torch.manual_seed(2)
    quantizer = IBQuantizer(50, 6)
    z = torch.randn(3, 6, 4, 7)
    out = quantizer(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (3, 4, 7)
    assert out.indices.dtype == torch.int64
    logits = z.movedim(1, -1) @ quantizer.codebook.detach().t()
    assert torch.equal(out.indices, logits.argmax(-1))
    torch.testing.assert_close(out.quantized, quantizer.lookup(out.indices))


def test_channels_last_input_and_empty_batch():
    quantizer = IBQuantizer(10, 3)
    out = quantizer(torch.randn(5, 2, 3))
    assert out.quantized.shape == (5, 2, 3) and out.indices.shape == (5, 2)
    empty = quantizer(torch.randn(0, 3))
    assert empty.quantized.shape == (0, 3) and empty.indices.shape == (0,)
    assert float(empty.usage) == 0.0


def test_every_code_receives_gradient():
    torch.manual_seed(3)
    quantizer = IBQuantizer(64, 8, entropy_weight=0.0)
    quantizer(torch.randn(16, 8)).loss.backward()
    assert (quantizer.codebook.grad.abs().sum(dim=1) > 0).all()


def test_codebook_init_is_standard_normal():
    torch.manual_seed(4)
    codebook = IBQuantizer(4096, 16).codebook.detach()
    assert abs(float(codebook.mean())) < 0.02 and abs(float(codebook.std()) - 1.0) < 0.02


def test_usage_and_perplexity():
    usage, perplexity = code_statistics(torch.tensor([0, 1, 1, 2, 2, 2, 3, 3]), 8)
    assert float(usage) == pytest.approx(4 / 8)
    probs = torch.tensor([1, 2, 3, 2]) / 8.0
    assert float(perplexity) == pytest.approx(float(torch.exp(-(probs * probs.log()).sum())), rel=1e-6)
    usage, perplexity = code_statistics(torch.arange(16), 16)
    assert float(usage) == 1.0 and float(perplexity) == pytest.approx(16.0, rel=1e-5)


def test_autocast_bf16_keeps_float32_search():
    torch.manual_seed(5)
    quantizer = IBQuantizer(128, 16)
    z = torch.randn(2, 16, 4, 4).bfloat16()
    expected = quantizer(z.float()).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert out.quantized.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.equal(out.indices, expected)


def test_nearest_gives_the_indices_of_forward_without_the_losses():
    torch.manual_seed(6)
    quantizer = IBQuantizer(128, 16)
    for z, channel_dim in ((torch.randn(2, 16, 4, 4), None), (torch.randn(3, 5, 16), -1),
                           (torch.randn(2, 16, 3, 3).bfloat16(), 1)):
        assert torch.equal(quantizer.nearest(z, channel_dim), quantizer(z, channel_dim).indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = torch.randn(2, 16, 4, 4)
        assert torch.equal(quantizer.nearest(z), quantizer(z.float()).indices)


@pytest.mark.parametrize("device_type,enabled,dtype,want", [
    ("cuda", True, torch.bfloat16, torch.bfloat16), ("cuda", True, torch.float16, torch.float16),
    ("cuda", True, torch.float32, None), ("cuda", False, torch.bfloat16, None), ("cpu", True, torch.bfloat16, None)])
def test_search_gemm_dtype_is_the_cuda_autocast_dtype(monkeypatch, device_type, enabled, dtype, want):
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device: enabled and device == device_type)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device: dtype)
    assert search_gemm_dtype(device_type) == want


def test_search_gemm_dtype_outside_autocast_and_on_cpu():
    assert search_gemm_dtype("cpu") is None and search_gemm_dtype("cuda") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert search_gemm_dtype("cpu") is None


@pytest.mark.parametrize("entropy_weight", [0.05, 0.0])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64])
def test_rounded_search_keeps_the_exact_codes(monkeypatch, entropy_weight, input_dtype):
    # As under CUDA autocast, on CPU: the op gets float32 tensors and gemm_dtype=bf16 (float64
    # input: none), and the codes are those of the float32 quantizer.
    torch.manual_seed(6)
    quantizer = IBQuantizer(512, 16, entropy_weight=entropy_weight)
    z = torch.randn(2, 16, 8, 8, dtype=input_dtype)
    expected = quantizer(z)
    seen = []
    for name in ("ibq_quantize", "ibq_quantize_with_entropy"):
        original = getattr(ops, name)

        def spy(*args, original=original, **kwargs):
            seen.append((args[0].dtype, kwargs.get("gemm_dtype")))
            return original(*args, **kwargs)
        monkeypatch.setattr(ops, name, spy)
    monkeypatch.setattr(quantizer_module, "search_gemm_dtype", lambda device_type: torch.bfloat16)
    out = quantizer(z)
    compute = torch.promote_types(input_dtype, torch.float32)
    assert seen == [(compute, torch.bfloat16 if compute == torch.float32 else None)]
    assert torch.equal(out.indices, expected.indices)
    rows = z.movedim(1, -1).reshape(-1, 16).double()
    assert torch.equal(out.indices.reshape(-1), (rows @ quantizer.codebook.double().t()).argmax(1))
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-2, atol=1e-3)


def test_bad_arguments_name_themselves():
    quantizer = IBQuantizer(10, 4)
    with pytest.raises(ValueError, match="'z'"):
        quantizer.nearest(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="'z'"):
        quantizer(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="'indices'"):
        quantizer.lookup(torch.tensor([[[10]]]))
    with pytest.raises(ValueError, match="'indices'"):
        quantizer.lookup(torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="'num_codes'"):
        IBQuantizer(0, 4)
