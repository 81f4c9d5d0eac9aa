"""One index on every path (docs/ibq.md, "One index on every path"): with exact_index=True, and
with rounded GEMM operands, the nearest code is the float64 argmax (ties -> lowest code) whatever
the dtype path, autocast or device, also where codes are closer than float32 resolves."""
import pytest
import torch

from dcae_ext import ops
from dcae_ext.models.ibq.quantizer import IBQuantizer
from dcae_ext.ops import reference
from dcae_ext.testing import devices


def near_duplicate_clusters(spread, rows=1024, clusters=1024, per_cluster=8, dim=256, seed=0):
    """`clusters` random directions, each with `per_cluster` codes that differ from it by a relative
    `spread` (8192 codes of dim 256 by default); one row near each direction."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=gen, dtype=torch.float64)
    codes = centers.repeat_interleave(per_cluster, 0)
    codes = codes * (1 + spread * torch.randn(codes.shape, generator=gen, dtype=torch.float64))
    z = centers[torch.arange(rows) % clusters] + 0.01 * torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    return z.float(), codes.float()


@pytest.mark.parametrize("spread", [1e-4, 1e-6])
def test_near_duplicates_give_the_float64_argmax_on_every_path(spread):
    # The issue's case: clusters of 8 codes at 1e-4 / 1e-6 relative spread. float32's own argmax
    # differs from the float64 one on some rows (more at 1e-6); every exact path gives float64's.
    z, codebook = near_duplicate_clusters(spread)
    want = reference.nearest_code(z, codebook, exact_index=True)
    float32_argmax = ops.nearest_code(z, codebook)
    assert (float32_argmax != want).sum() >= (1 if spread == 1e-4 else 20)  # the test has teeth
    paths = {"float32": dict(exact_index=True), "bf16": dict(gemm_dtype=torch.bfloat16),
             "fp16": dict(gemm_dtype=torch.float16),
             "bf16 + exact_index": dict(gemm_dtype=torch.bfloat16, exact_index=True)}
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for name, options in paths.items():
                assert torch.equal(ops.nearest_code(z, codebook, **options), want), (name, autocast)
    # the quantizer's nearest (what tokenizing calls), float32 and under autocast
    quantizer = IBQuantizer(codebook.shape[0], codebook.shape[1])
    with torch.no_grad():
        quantizer.codebook.copy_(codebook)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            assert torch.equal(quantizer.nearest(z), want), autocast


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_near_duplicates_under_every_metric(metric):
    z, codebook = near_duplicate_clusters(1e-6, rows=256, clusters=256, dim=64)
    want = reference.nearest_code(z, codebook, metric, exact_index=True)
    assert (ops.nearest_code(z, codebook, metric) != want).any()  # float32 alone cannot tell
    for options in (dict(exact_index=True), dict(gemm_dtype=torch.bfloat16), dict(gemm_dtype=torch.float16)):
        assert torch.equal(ops.nearest_code(z, codebook, metric, **options), want), options


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("metric", ["dot", "l2", "cosine"])
def test_half_and_double_inputs_give_the_float64_argmax_of_their_values(device, dtype, metric):
    z, codebook = near_duplicate_clusters(1e-2, rows=64, clusters=64, dim=32)
    z, codebook = z.to(device, dtype), codebook.to(device, dtype)
    want = reference.nearest_code(z.cpu().double(), codebook.cpu().double(), metric)
    assert torch.equal(ops.nearest_code(z, codebook, metric, exact_index=True).cpu(), want)
    z_q, idx = ops.ibq_quantize(z, codebook, metric=metric, exact_index=True)
    assert torch.equal(idx.cpu(), want) and torch.equal(z_q, codebook[idx])
