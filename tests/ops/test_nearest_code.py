"""ops.nearest_code: the argmax of the "dot", "l2" or "cosine" score through the compiled IBQ driver
(docs/ibq.md, "Distance metrics"), against its reference; exact under rounded GEMM operands and with
exact_index, where the norm terms are part of the rounding bound."""
import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.testing import device_dtypes, devices
from dcae_ext.testing import ibq_inputs as _inputs

METRICS = ["dot", "l2", "cosine"]
HALF = [torch.bfloat16, torch.float16]


def _nearest(z, codebook, metric, gemm_dtype=None, codes_per_tile=0, exact_index=False):
    """(idx, [rows certified, re-ranked among candidates, searched in full]) of the compiled search."""
    idx, search = torch.ops.dcae_ext._ibq_nearest(z, codebook, gemm_dtype, codes_per_tile, metric, exact_index)
    return idx, torch.bincount(search.long().cpu(), minlength=3).tolist()


def _exact(z, codebook, metric):
    """The argmax of the metric's score in float64, ties -> lowest code."""
    return reference.nearest_code(z.cpu(), codebook.cpu(), metric, exact_index=True)


def _assert_same_up_to_rounding(idx, want, z, codebook, metric):
    """idx equals want except on rows whose two codes' float64 scores differ by float32 rounding."""
    scores = reference.ibq_logits(z.cpu(), codebook.cpu(), metric, torch.float64)
    flat_idx, flat_want = idx.reshape(-1).cpu(), want.reshape(-1).cpu()
    for n in (flat_idx != flat_want).nonzero().flatten().tolist():
        gap = (scores[n, flat_idx[n]] - scores[n, flat_want[n]]).abs().item()
        assert gap <= 1e-5 * scores[n].abs().max().item() + 1e-6, (n, gap)


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 0), (7, 13, 5, 4), (130, 2053, 13, 500), (5, 33, 256, 16)])
def test_matches_reference(device, dtype, metric, shape):
    n, k, d, tile = shape
    z, codebook = _inputs(n, k, d, device, dtype, batch=(2,))
    z = z * 3  # l2 and dot disagree for rows longer than the codes
    idx = ops.nearest_code(z, codebook, metric)
    assert idx.shape == z.shape[:-1] and idx.dtype == torch.int64 and idx.device == z.device
    _assert_same_up_to_rounding(idx, reference.nearest_code(z, codebook, metric), z, codebook, metric)
    assert torch.equal(_nearest(z.reshape(-1, d), codebook, metric, codes_per_tile=tile)[0], idx.reshape(-1))
    exact = ops.nearest_code(z, codebook, metric, exact_index=True)
    assert torch.equal(exact.cpu(), _exact(z, codebook, metric))


def test_the_metrics_pick_different_codes():
    # Code 0 points along z but is long, code 1 is short and near z, code 2 is z's direction at
    # another length: dot prefers 0, l2 prefers 1 (the norm term), cosine 2 (the normalisation).
    z = torch.tensor([[1.0, 0.1]])
    codebook = torch.tensor([[3.0, 0.0], [0.9, 0.2], [0.2, 0.02]])
    assert [ops.nearest_code(z, codebook, m).item() for m in METRICS] == [0, 1, 2]
    assert [reference.nearest_code(z, codebook, m).item() for m in METRICS] == [0, 1, 2]
    distances = torch.cdist(z, codebook)
    assert distances.argmin().item() == 1


def test_ibq_nearest_code_is_the_dot_metric():
    z, codebook = _inputs(40, 300, 8, "cpu", torch.float32)
    assert torch.equal(ops.ibq_nearest_code(z, codebook), ops.nearest_code(z, codebook))
    assert torch.equal(ops.ibq_nearest_code(z, codebook, exact_index=True),
                       ops.nearest_code(z, codebook, "dot", exact_index=True))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
def test_empty_rows_and_views(device, metric):
    z, codebook = _inputs(12, 40, 6, device, torch.float32)
    assert ops.nearest_code(z[:0], codebook, metric).shape == (0,)
    assert ops.nearest_code(z[:0].reshape(0, 3, 6), codebook, metric).shape == (0, 3)
    # non-contiguous rows and codebook: a transposed layout and a strided slice
    z_t = z.t().contiguous().t()
    codebook_strided = torch.stack([codebook, -codebook], 2)[:, :, 0]
    assert not z_t.is_contiguous() and not codebook_strided.is_contiguous()
    want = ops.nearest_code(z, codebook, metric)
    assert torch.equal(ops.nearest_code(z_t, codebook_strided, metric), want)
    assert torch.equal(ops.nearest_code(z_t, codebook_strided, metric, exact_index=True),
                       ops.nearest_code(z, codebook, metric, exact_index=True))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
def test_duplicated_codes_pick_the_lowest_index(device, metric):
    z, codebook = _inputs(6, 40, 8, device, torch.float32)
    codebook = codebook / codebook.norm(dim=1, keepdim=True)
    codebook[9] = codebook[2]
    codebook[33] = codebook[2]
    codebook[5] = codebook[21]
    z[:3] = codebook[2] + 0.01 * z[:3]
    z[3:] = codebook[21] + 0.01 * z[3:]
    for gemm_dtype, exact_index in [(None, False), (None, True), (torch.bfloat16, False)]:
        for tile in (0, 8, 1):
            idx, _ = _nearest(z, codebook, metric, gemm_dtype, tile, exact_index)
            assert idx.tolist() == [2, 2, 2, 5, 5, 5], (gemm_dtype, exact_index, tile)


@pytest.mark.parametrize("device", devices())
def test_cosine_ties_of_scaled_copies_pick_the_lowest_code(device):
    # c, 2c and 4c have the same cosine with every z (powers of two scale exactly in every
    # precision): the lowest of them wins, on every path.
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(3, 16, generator=gen)
    codebook = torch.randn(20, 16, generator=gen) * 0.1
    codebook[7], codebook[2], codebook[11] = base[0], 2 * base[0], 4 * base[0]
    codebook[15], codebook[4] = 4 * base[1], 0.5 * base[1]
    z = base[:2].repeat_interleave(3, 0) + 0.01 * torch.randn(6, 16, generator=gen)
    z, codebook = z.to(device), codebook.to(device)
    for gemm_dtype, exact_index in [(None, False), (None, True), (torch.bfloat16, False), (torch.float16, False)]:
        idx, _ = _nearest(z, codebook, "cosine", gemm_dtype, 8, exact_index)
        assert idx.tolist() == [2, 2, 2, 4, 4, 4], (gemm_dtype, exact_index)


def _norm_ties(device):
    """Rows z = 0, so the l2 score is -|c|^2 / 2 alone: the shortest code wins. 12 codes differ from
    one another by a few float32 ulps in a few coordinates, which moves |c|^2 by less than its
    float32 rounding: the first seed where the float32 scores (as the op computes them, from a
    float32 norm) have a unique maximum on another code than the shortest."""
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        base = torch.rand(64, generator=gen) + 0.5
        codes = base.repeat(12, 1)
        for _ in range(3):  # up to 3 ulps up or down in each of 8 coordinates
            moved = torch.randint(-1, 2, (12, 8), generator=gen).float()
            codes[:, :8] = torch.nextafter(codes[:, :8], codes[:, :8] + moved)
        float32_scores = torch.linalg.vector_norm(codes, dim=1).square() * -0.5
        unique_top = (float32_scores == float32_scores.max()).sum() == 1
        if unique_top and float32_scores.argmax() != codes.double().square().sum(1).argmin():
            filler = torch.rand(30, 64, generator=gen) + 0.7  # longer than every near-tie
            codebook = torch.cat([filler[:3], codes, filler[3:]]).to(device)
            return torch.zeros(4, 64, device=device), codebook
    raise AssertionError("no seed gave a float32 misranking")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype,exact_index", [(None, True), (torch.bfloat16, False), (torch.float16, False)])
def test_l2_norm_term_near_ties_are_exact(device, gemm_dtype, exact_index):
    # The rounding bound includes the norm term: without it these rows are certified on the
    # float32 scores' unique winner, which is not the shortest code.
    z, codebook = _norm_ties(device)
    if device == "cpu":  # the op's float32 scores rank as computed above
        assert not torch.equal(ops.nearest_code(z, codebook, "l2"), _exact(z, codebook, "l2"))
    idx, counts = _nearest(z, codebook, "l2", gemm_dtype, 8, exact_index)
    assert torch.equal(idx.cpu(), _exact(z, codebook, "l2")) and counts[0] == 0, counts


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("gemm_dtype", HALF)
def test_near_copies_are_reranked_to_the_exact_code(device, metric, gemm_dtype):
    # groups of codes that differ by twice the dtype's unit roundoff: the rounded scores cannot
    # tell them apart, the exact ones can (and l2 / cosine rank them differently from dot)
    unit = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[gemm_dtype]
    gen = torch.Generator().manual_seed(6)
    bases = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    bases = 2 * bases / bases.norm(dim=1, keepdim=True)
    copies = bases.repeat_interleave(5, 0) * (1 + 2 * unit * torch.randn(30, 16, generator=gen, dtype=torch.float64))
    filler = torch.randn(100, 16, generator=gen, dtype=torch.float64)
    codebook = torch.cat([copies, filler / filler.norm(dim=1, keepdim=True)])
    codebook = codebook[torch.randperm(130, generator=gen)].to(device, torch.float32)
    z = (bases.repeat_interleave(4, 0) * 1.5 + 0.05 * torch.randn(24, 16, generator=gen, dtype=torch.float64))
    z = z.to(device, torch.float32)
    for tile in (0, 7):
        idx, counts = _nearest(z, codebook, metric, gemm_dtype, tile)
        assert torch.equal(idx.cpu(), _exact(z, codebook, metric)) and counts[0] < len(z), counts


@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
@pytest.mark.parametrize("metric", ["L2", "euclidean", "", None, 2])
def test_bad_metric_names_the_argument(metric, reference_mode):
    z, codebook = _inputs(4, 6, 3, "cpu", torch.float32)
    previous = ops.use_reference(reference_mode)
    try:
        for call in (lambda: ops.nearest_code(z, codebook, metric),
                     lambda: ops.ibq_quantize(z, codebook, metric=metric),
                     lambda: ops.ibq_entropy_loss(z, codebook, metric=metric),
                     lambda: ops.ibq_quantize_with_entropy(z, codebook, metric=metric)):
            with pytest.raises(ValueError, match="argument 'metric'"):
                call()
    finally:
        ops.use_reference(previous)
    if isinstance(metric, str):
        with pytest.raises(ValueError, match="argument 'metric'"):
            torch.ops.dcae_ext.ibq_forward(z, codebook, 1.0, True, False, 0, None, metric)
        with pytest.raises(ValueError, match="argument 'metric'"):
            torch.ops.dcae_ext._check_ibq_args(z, codebook, 1.0, None, metric)


def test_bad_exact_index_names_the_argument():
    z, codebook = _inputs(4, 6, 3, "cpu", torch.float32)
    with pytest.raises(ValueError, match="argument 'exact_index'"):
        ops.nearest_code(z, codebook, exact_index="yes")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_opcheck_nearest(device, metric):
    z, codebook = _inputs(9, 21, 5, device, torch.float32)
    # the search alone is ibq_forward with quantize and entropy off
    for gemm_dtype, exact_index in ((None, False), (torch.bfloat16, False), (None, True)):
        torch.library.opcheck(torch.ops.dcae_ext.ibq_forward,
                              (z, codebook, 1.0, False, False, 8, gemm_dtype, metric, exact_index))


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_matches_eager(device):
    z, codebook = _inputs(10, 40, 8, device, torch.float32, batch=(2,))

    def search(z, codebook):
        return [ops.nearest_code(z * 1.5, codebook, metric, exact_index=exact)
                for metric in METRICS for exact in (False, True)]

    compiled = torch.compile(search, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(z, codebook), search(z, codebook)):
        assert torch.equal(got, want)
