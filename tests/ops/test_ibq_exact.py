"""IBQ with rounded GEMM operands (gemm_dtype, docs/ibq.md "Exact index with half-precision
GEMMs"): the index stays the exact argmax on adversarial near-ties, each row takes the cheapest
sound path (certified / re-ranked among candidates / full float64 row), and the gradients are
those of the same math on the rounded operands."""
import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.ops.ibq import _run
from dcae_ext.testing import assert_compiled_step_matches_eager, codebook_grad_without_scatter, devices
from dcae_ext.testing import ibq_inputs as _inputs

HALF = [torch.bfloat16, torch.float16]
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
CERTIFIED = 0  # counts: [certified, re-ranked among candidates, full row] (IbqRowSearch)
CANDIDATES_KEPT = 16  # kIbqCandidates (csrc/ibq/ibq.h)


def _nearest(z, codebook, gemm_dtype, codes_per_tile=0):
    idx, search = torch.ops.dcae_ext._ibq_nearest(z, codebook, gemm_dtype, codes_per_tile)
    return idx, torch.bincount(search.long().cpu(), minlength=3).tolist()


def _exact_argmax(z, codebook):
    """argmax in float64 (exact products of float32 values), ties -> lowest code."""
    return (z.double() @ codebook.double().t()).argmax(1)


def _assert_exact(z, codebook, gemm_dtype, codes_per_tile):
    """idx with rounded GEMMs == float64 argmax == the float32 op == the float32 reference."""
    idx, counts = _nearest(z, codebook, gemm_dtype, codes_per_tile)
    want = _exact_argmax(z, codebook)
    assert torch.equal(idx.cpu(), want.cpu())
    assert torch.equal(idx, _nearest(z, codebook, None, codes_per_tile)[0])
    assert torch.equal(idx, reference.ibq_quantize(z, codebook)[1])
    return counts


def _groups_of_near_copies(device, group_size, spread, groups=6, rows_per_group=5, d=16, fillers=100, seed=0):
    """`groups` random directions, each with `group_size` codes that differ from it by a relative
    `spread` (below the half dtype's resolution), at random places among `fillers` shorter codes;
    z rows point near one direction each, so their top logits are the group's near-ties."""
    gen = torch.Generator().manual_seed(seed)
    bases = torch.randn(groups, d, generator=gen, dtype=torch.float64)
    bases = 4 * bases / bases.norm(dim=1, keepdim=True)
    copies = bases.repeat_interleave(group_size, 0)
    copies = copies * (1 + spread * torch.randn(copies.shape, generator=gen, dtype=torch.float64))
    filler = torch.randn(fillers, d, generator=gen, dtype=torch.float64)
    filler = filler / filler.norm(dim=1, keepdim=True)
    codebook = torch.cat([copies, filler])[torch.randperm(len(copies) + fillers, generator=gen)]
    z = bases.repeat_interleave(rows_per_group, 0)
    z = z + 0.05 * torch.randn(z.shape, generator=gen, dtype=torch.float64)
    return z.to(device, torch.float32), codebook.to(device, torch.float32)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
@pytest.mark.parametrize("codes_per_tile", [0, 7, 64])
def test_near_copies_are_reranked_among_candidates(device, gemm_dtype, codes_per_tile):
    # 5 codes per direction differing by twice the dtype's unit roundoff (relative): their
    # rounded logits are apart by less than the bound, the float32 ones by ~1e3 roundings.
    # Every row is re-ranked, none needs its full row.
    z, codebook = _groups_of_near_copies(device, group_size=5, spread=2 * UNIT_ROUNDOFF[gemm_dtype])
    counts = _assert_exact(z, codebook, gemm_dtype, codes_per_tile)
    assert counts == [0, len(z), 0]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
@pytest.mark.parametrize("codes_per_tile", [0, 7])
def test_more_near_ties_than_candidates_fall_back_to_the_full_row(device, gemm_dtype, codes_per_tile):
    z, codebook = _groups_of_near_copies(device, group_size=CANDIDATES_KEPT + 4, spread=2 * UNIT_ROUNDOFF[gemm_dtype])
    counts = _assert_exact(z, codebook, gemm_dtype, codes_per_tile)
    assert counts == [0, 0, len(z)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
def test_codes_differing_in_the_last_float32_bits(device, gemm_dtype):
    # Copies of a code with one coordinate moved by 1..6 float32 ulps: the rounded logits are
    # equal, the exact ones differ in their last bits. The answer is the exact argmax.
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(4, generator=gen) + 0.5
    codes = [base.clone()]
    for ulps in (3, 1, 6, 2, 5):
        code = base.clone()
        for _ in range(ulps):
            code[2] = torch.nextafter(code[2], torch.tensor(10.0))
        codes.append(code)
    filler = torch.rand(40, 4, generator=gen) * 0.5
    codebook = torch.cat([filler[:20], torch.stack(codes), filler[20:]]).to(device)
    z = (base + 0.01 * torch.rand(9, 4, generator=gen)).to(device)
    z[:, 2] = z[:, 2].abs() + 0.5  # a positive weight on the moved coordinate: the most ulps win
    for tile in (0, 3, 16):
        idx, counts = _nearest(z, codebook, gemm_dtype, tile)
        assert torch.equal(idx.cpu(), _exact_argmax(z, codebook).cpu())
        assert idx.tolist() == [20 + 3] * len(z) and counts == [0, len(z), 0]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
@pytest.mark.parametrize("codes_per_tile", [0, 5, 64])
def test_exact_ties_of_integer_logits_pick_the_lowest_code(device, gemm_dtype, codes_per_tile):
    # Small integers: every logit is exact in every precision, and many rows hold equal maxima
    # (rows equidistant to several codes), some codes are duplicated across tiles.
    gen = torch.Generator().manual_seed(1)
    z = torch.randint(-2, 3, (64, 8), generator=gen).float()
    codebook = torch.randint(-1, 2, (300, 8), generator=gen).float()
    codebook[150:160] = codebook[10:20]
    z, codebook = z.to(device), codebook.to(device)
    logits = z.double() @ codebook.double().t()
    tied = (logits == logits.max(1, keepdim=True).values).sum(1) > 1
    assert tied.sum() >= 10  # the test is about ties
    counts = _assert_exact(z, codebook, gemm_dtype, codes_per_tile)
    assert counts[CERTIFIED] <= len(z) - int(tied.sum())  # no tied row is certified


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
def test_exact_ties_that_rounding_breaks_pick_the_lowest_code(device, gemm_dtype):
    # z = (s, s): codes (1, 1) and (1 + delta, 1 - delta) tie exactly, but rounding turns the
    # second into (1, 1 - 2^-8) (bf16; fp16 alike), so the rounded logits rank the later code
    # first. The re-rank must still pick the lower code.
    delta = 0.75 * UNIT_ROUNDOFF[gemm_dtype]
    codebook = torch.tensor([[0.5, 0.25], [0.25, 0.5], [1 + delta, 1 - delta], [0.1, 0.9], [1.0, 1.0], [0.9, 0.1]])
    z = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.25, 0.25]])
    rounded = (z @ codebook.to(gemm_dtype).float().t()).argmax(1)
    assert rounded.tolist() == [4, 4, 4]  # the rounding really breaks the tie the other way
    for tile in (0, 1, 3):
        idx, counts = _nearest(z.to(device), codebook.to(device), gemm_dtype, tile)
        assert idx.tolist() == [2, 2, 2] and counts == [0, 3, 0]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
def test_duplicated_codes_pick_the_lowest_index(device, gemm_dtype):
    z, codebook = _inputs(6, 40, 8, device, torch.float32)
    codebook = codebook / codebook.norm(dim=1, keepdim=True)
    codebook[9] = codebook[2]
    codebook[33] = codebook[2]
    codebook[5] = codebook[21]
    z[:3] = codebook[2] * 4 + 0.01 * z[:3]
    z[3:] = codebook[21] * 4 + 0.01 * z[3:]
    for tile in (0, 8, 1):
        idx, counts = _nearest(z, codebook, gemm_dtype, tile)
        assert idx.tolist() == [2, 2, 2, 5, 5, 5] and counts == [0, 6, 0]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
def test_well_separated_codes_are_certified_without_a_rerank(device, gemm_dtype):
    z, codebook = _inputs(48, 64, 32, device, torch.float32)
    codebook = codebook / codebook.norm(dim=1, keepdim=True)
    z = 4 * codebook[torch.arange(48) % 64] + 0.01 * z
    counts = _assert_exact(z, codebook, gemm_dtype, 16)
    assert counts == [len(z), 0, 0]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gemm_dtype", HALF)
@pytest.mark.parametrize("shape", [(1, 1, 1, 0), (130, 2053, 13, 500), (64, 4096, 64, 0), (5, 33, 256, 16)])
def test_random_inputs_match_the_exact_argmax(device, gemm_dtype, shape):
    n, k, d, tile = shape
    z, codebook = _inputs(n, k, d, device, torch.float32)
    _assert_exact(z, codebook, gemm_dtype, tile)


@pytest.mark.parametrize("device", devices())
def test_inputs_beyond_the_half_range_run_exact_float32(device):
    # fp16 cannot hold 1e5; a NaN or inf cannot be bounded: the whole call takes float32 operands.
    z, codebook = _inputs(9, 30, 4, device, torch.float32)
    big = codebook.clone()
    big[7] *= 1e5
    poisoned = z.clone()
    poisoned[2, 1] = float("nan")
    poisoned[4, 0] = float("inf")
    for gemm_dtype, (zz, cc) in [(torch.float16, (z, big)), (torch.bfloat16, (poisoned, codebook)),
                                 (torch.float16, (poisoned, codebook))]:
        idx, counts = _nearest(zz, cc, gemm_dtype)
        assert torch.equal(idx, _nearest(zz, cc, None)[0]) and counts == [len(zz), 0, 0]
        assert torch.equal(idx, reference.ibq_quantize(zz, cc)[1])


def _grads(fn, z, codebook, grad_z_q, grad_entropy):
    z = z.detach().clone().requires_grad_(True)
    codebook = codebook.detach().clone().requires_grad_(True)
    z_q, idx, ent = fn(z, codebook)
    loss = (z_q.double() * grad_z_q).sum() + grad_entropy * ent.double()
    return (z_q.detach(), idx, ent.detach(), *torch.autograd.grad(loss, (z, codebook)))


@pytest.mark.parametrize("gemm_dtype", HALF)
def test_gradients_are_the_rounded_operands_math(gemm_dtype):
    # CPU emulation: the op's softmax, entropy and gradients are the reference's math on z, the
    # codebook and the upstream gradient G rounded to gemm_dtype (to float32 precision; the
    # straight-through scatter takes G as given), while z_q and idx stay exact. Its gradients
    # differ from the float32 op's by what rounding the inputs does to the reference.
    z, codebook = _inputs(33, 200, 16, "cpu", torch.float32)
    temperature = 0.5
    gen = torch.Generator().manual_seed(2)
    grad_z_q, grad_entropy = torch.randn(z.shape, generator=gen, dtype=torch.float64), 3.0
    rounded_grad_z_q = grad_z_q.float().to(gemm_dtype).double()

    def reference_fn(a, b):
        z_q, idx = reference.ibq_quantize(a, b)
        return z_q, idx, reference.ibq_entropy_loss(a, b, temperature)

    got = _grads(lambda a, b: _run(a, b, temperature, True, True, 16, gemm_dtype), z, codebook, grad_z_q,
                 grad_entropy)
    float32_op = _grads(lambda a, b: _run(a, b, temperature, True, True, 16), z, codebook, grad_z_q, grad_entropy)
    rounded = _grads(reference_fn, z.to(gemm_dtype).double(), codebook.to(gemm_dtype).double(), rounded_grad_z_q,
                     grad_entropy)
    exact = _grads(reference_fn, z.double(), codebook.double(), grad_z_q, grad_entropy)

    assert torch.equal(got[1], _exact_argmax(z, codebook)) and torch.equal(got[0], codebook[got[1]])
    torch.testing.assert_close(got[2].double(), rounded[2], rtol=1e-5, atol=1e-5)
    parts = {"d z": lambda r, upstream: r[3].double(),
             "d codebook": lambda r, upstream: codebook_grad_without_scatter(r[4], r[1], upstream)}
    for what, part in parts.items():
        mine, theirs = part(got, grad_z_q), part(rounded, rounded_grad_z_q)
        scale = theirs.abs().max().item()
        torch.testing.assert_close(mine, theirs, rtol=2e-4, atol=2e-4 * scale, msg=lambda m, what=what: f"{what}: {m}")
        # against the float32 op: twice what the rounding moves the exact gradient, plus float32
        allowed = 2 * (theirs - part(exact, grad_z_q)).abs().max().item() + 2e-4 * scale
        assert (mine - part(float32_op, grad_z_q)).abs().max().item() <= allowed, what


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("quantize,entropy", [(True, False), (False, True), (True, True)])
def test_opcheck_with_gemm_dtype(device, quantize, entropy):
    z, codebook = _inputs(9, 21, 5, device, torch.float32)
    torch.library.opcheck(torch.ops.dcae_ext.ibq_forward, (z.requires_grad_(True), codebook.requires_grad_(True),
                                                           0.5, quantize, entropy, 8, torch.bfloat16))
    z, codebook = z.detach(), codebook.detach()
    _, idx, _, row_stats, soft, coef, plan = torch.ops.dcae_ext.ibq_forward(z, codebook, 0.5, quantize, entropy, 8,
                                                                            torch.bfloat16)
    grad_z_q = torch.randn_like(z) if quantize else None
    grad_entropy = torch.tensor(0.3, device=device) if entropy else None
    torch.library.opcheck(torch.ops.dcae_ext._ibq_backward,
                          (grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft, coef, plan, 0.5, 8))


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_with_gemm_dtype(device):
    z, codebook = _inputs(10, 40, 8, device, torch.float32, batch=(2,))

    def step(z, codebook):
        z_q, idx, ent = ops.ibq_quantize_with_entropy(z * 1.5, codebook, 0.1, gemm_dtype=torch.bfloat16)
        return (z_q - z).square().mean() + 0.05 * ent, idx

    assert_compiled_step_matches_eager(step, z, codebook)


@pytest.mark.parametrize("reference_mode", [False, True])
@pytest.mark.parametrize("z_dtype,gemm_dtype", [(torch.float32, torch.float64), (torch.float32, torch.int32),
                                                (torch.float32, "bfloat16"), (torch.float64, torch.bfloat16),
                                                (torch.bfloat16, torch.float16)])
def test_bad_gemm_dtype_names_the_argument(reference_mode, z_dtype, gemm_dtype):
    z, codebook = _inputs(4, 6, 3, "cpu", z_dtype)
    previous = ops.use_reference(reference_mode)
    try:
        for call in (ops.ibq_quantize, ops.ibq_entropy_loss, ops.ibq_quantize_with_entropy):
            with pytest.raises(ValueError, match="gemm_dtype"):
                call(z, codebook, gemm_dtype=gemm_dtype)
    finally:
        ops.use_reference(previous)
    if isinstance(gemm_dtype, torch.dtype):
        with pytest.raises(ValueError, match="gemm_dtype"):
            torch.ops.dcae_ext.ibq_forward(z, codebook, 1.0, True, True, 0, gemm_dtype)


@pytest.mark.parametrize("gemm_dtype", [None, torch.float32])
def test_float32_gemm_dtype_is_the_default_path(gemm_dtype):
    z, codebook = _inputs(20, 50, 6, "cpu", torch.float32)
    idx, counts = _nearest(z, codebook, gemm_dtype)
    assert torch.equal(idx, reference.ibq_quantize(z, codebook)[1]) and counts == [20, 0, 0]


@pytest.fixture
def cuda_matmul_settings():
    """Restores torch's CUDA matmul precision settings, which these tests change."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.fp32_precision,
             torch.backends.cuda.matmul.fp32_precision, torch.backends.cuda.matmul.allow_fp16_accumulation)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved[1], saved[2]
    torch.backends.cuda.matmul.allow_fp16_accumulation = saved[3]


@pytest.mark.cuda
@pytest.mark.parametrize("setting", [
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "torch.backends.fp32_precision = 'tf32'",
    "torch.backends.cuda.matmul.allow_tf32 = True",
    "torch.set_float32_matmul_precision('high')",
    "torch.set_float32_matmul_precision('high'); torch.backends.cuda.matmul.fp32_precision = 'ieee'",
])
def test_float32_on_cuda_under_every_tf32_setting(setting, cuda_matmul_settings):
    # Reading the TF32 state through the legacy getters threw once the new API was used, so every
    # CUDA float32 call raised; under TF32 the index is still the exact argmax.
    exec(setting)
    # near-copies that float32 logits tell apart and TF32's cannot: those rows are re-ranked
    z, codebook = _groups_of_near_copies("cuda", group_size=4, spread=1e-4)
    idx, counts = _nearest(z, codebook, None)
    assert torch.equal(idx.cpu(), _exact_argmax(z, codebook).cpu())
    assert (counts[CERTIFIED] < len(z)) == ("ieee" not in setting), counts  # TF32 seen: rows re-ranked
    z_q, idx_op = ops.ibq_quantize(z.requires_grad_(True), codebook)
    z_q.sum().backward()
    assert torch.equal(idx_op, idx) and z.grad.isfinite().all()


@pytest.mark.cuda
def test_fp16_under_fp16_accumulation_takes_float32_operands(cuda_matmul_settings):
    # cuBLAS refuses fp16 operands with float32 logits under allow_fp16_accumulation
    torch.backends.cuda.matmul.allow_fp16_accumulation = True
    z, codebook = _groups_of_near_copies("cuda", group_size=4, spread=1e-4)
    idx, counts = _nearest(z, codebook, torch.float16)
    assert torch.equal(idx.cpu(), _exact_argmax(z, codebook).cpu()) and counts == [len(z), 0, 0]  # exact float32
    half_z, half_codebook = _inputs(64, 300, 16, "cuda", torch.float16)
    assert torch.equal(ops.ibq_quantize(half_z, half_codebook)[1], _exact_argmax(half_z.float(), half_codebook.float()))
