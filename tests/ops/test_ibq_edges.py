"""IBQ at the edges: NaN and inf logits, bad arguments to the public functions and to the
compiled ops (forward and backward)."""
import math

import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import reference
from dcae_ext.ops.ibq import _run
from dcae_ext.testing import device_dtypes, devices
from dcae_ext.testing import ibq_inputs as _inputs
from dcae_ext.testing import ibq_poisoned_codes, ibq_poisoned_rows


def _reference(z, codebook, temperature):
    z_q, idx = reference.ibq_quantize(z, codebook)
    return z_q, idx, reference.ibq_entropy_loss(z, codebook, temperature)


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("make", [ibq_poisoned_rows, ibq_poisoned_codes])
@pytest.mark.parametrize("codes_per_tile", [0, 4])
def test_nan_and_inf_follow_torch_argmax(device, dtype, make, codes_per_tile):
    # The policy (docs/ibq.md): idx is torch.argmax of the logits (a NaN logit wins, then the
    # lowest index); a row whose softmax is undefined gets a NaN z_q; the entropy is NaN.
    z, codebook = make(device, dtype)
    z_q, idx, ent = _run(z, codebook, 0.5, True, True, codes_per_tile)
    ref_z_q, ref_idx, ref_ent = _reference(z, codebook, 0.5)
    logits = reference.ibq_logits(z, codebook)
    assert torch.equal(idx, logits.argmax(dim=-1)) and torch.equal(idx, ref_idx)
    undefined = ~torch.logsumexp(logits, dim=-1).isfinite()
    assert torch.equal(z_q.isnan().all(dim=-1), undefined) and torch.equal(ref_z_q.isnan().all(dim=-1), undefined)
    assert torch.equal(z_q[~undefined], codebook[idx[~undefined]])
    assert ent.isnan() and ref_ent.isnan()
    assert torch.equal(_run(z, codebook, 0.5, True, False, codes_per_tile)[1], idx)
    assert torch.equal(ops.ibq_quantize(z, codebook)[1], idx)


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("make", [ibq_poisoned_rows, ibq_poisoned_codes, "ties", "empty"])
def test_nearest_code_is_the_index_of_quantize(device, dtype, make):
    if make == "ties":  # duplicated codes: the lowest index wins
        z, codebook = _inputs(7, 20, 5, device, dtype)
        codebook[11:] = codebook[:9].clone()
    elif make == "empty":
        z, codebook = _inputs(0, 20, 5, device, dtype)
    else:
        z, codebook = make(device, dtype)
    z = z.reshape(-1, 1, z.shape[-1]).requires_grad_(True)
    idx = ops.ibq_nearest_code(z, codebook)
    assert idx.shape == z.shape[:-1] and idx.dtype == torch.int64 and not idx.requires_grad
    assert torch.equal(idx, ops.ibq_quantize(z, codebook)[1])
    assert torch.equal(idx, reference.ibq_quantize(z, codebook)[1])
    assert torch.equal(reference.ibq_nearest_code(z, codebook), idx)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.ibq_nearest_code(torch.randn(4, 3), torch.randn(5, 4)), "'codebook': dimension 4"),
    (lambda: ops.ibq_nearest_code(torch.randn(4, 3), [[1.0, 2.0, 3.0]]), "'codebook': expected a torch.Tensor"),
    (lambda: ops.ibq_quantize(torch.randn(4, 3), torch.randn(5, 4)), "'codebook': dimension 4"),
    (lambda: ops.ibq_quantize(torch.ones(4, 3, dtype=torch.int64), torch.randn(5, 3)), "'z': expected a floating"),
    (lambda: ops.ibq_quantize(torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64)), "'codebook': dtype"),
    (lambda: ops.ibq_quantize(torch.randn(4, 3), torch.randn(2, 5, 3)), "'codebook': expected a 2-D"),
    (lambda: ops.ibq_quantize(torch.randn(4, 3), torch.randn(0, 3)), "'codebook': needs at least one"),
    (lambda: ops.ibq_entropy_loss(torch.randn(4, 3), torch.randn(5, 3), 0.0), "'temperature'"),
    (lambda: ops.ibq_entropy_loss(torch.randn(4, 3), torch.randn(5, 3), math.inf), "'temperature'"),
    (lambda: ops.ibq_quantize_with_entropy(torch.randn(4, 3), torch.randn(5, 3), math.nan), "'temperature'"),
    (lambda: ops.ibq_quantize_with_entropy(torch.randn(4, 3), torch.randn(5, 3), -1.0), "'temperature'"),
    (lambda: ops.ibq_quantize(torch.randn(4, 0), torch.randn(5, 0)), "'z': needs a last dimension"),
    (lambda: ops.ibq_entropy_loss(torch.randn(2, 4, 0), torch.randn(5, 0)), "'z': needs a last dimension"),
    (lambda: ops.ibq_entropy_loss(torch.randn(4, 3), torch.randn(5, 3), "0.1"), "'temperature': expected a number"),
    (lambda: ops.ibq_quantize(torch.randn(4, 3), torch.randn(5, 3, device="meta")), "'codebook': is on meta"),
    (lambda: ops.ibq_quantize([1.0], torch.randn(5, 3)), "'z': expected a torch.Tensor"),
    (lambda: ops.ibq_quantize_with_entropy(torch.randn(()), torch.randn(5, 3)), "'z'"),
])
@pytest.mark.parametrize("reference_mode", [False, True], ids=["kernel", "reference"])
def test_bad_inputs_raise_value_error(call, match, reference_mode):
    # The same error whether the kernel or the reference would run: the checks are the op's own.
    ops.use_reference(reference_mode)
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("args,match", [
    ((torch.randn(4, 3), torch.randn(5, 4), 1.0), "argument 'codebook'"),
    ((torch.randn(4, 3), torch.randn(5, 3), -1.0), "argument 'temperature'"),
    ((torch.randn(4, 3), torch.randn(5, 3), math.inf), "argument 'temperature'"),
    ((torch.randn(4, 3), torch.randn(5, 3), math.nan), "argument 'temperature'"),
    ((torch.randn(4, 0), torch.randn(5, 0), 1.0), "argument 'z'"),
])
def test_kernel_checks_arguments_too(args, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.dcae_ext.ibq_forward(*args, True, True, 0)


def _backward_args(device):
    z, codebook = _inputs(9, 21, 5, device, torch.float32)
    _, idx, _, row_stats, soft, coef, plan = torch.ops.dcae_ext.ibq_forward(z, codebook, 0.5, True, True, 8)
    return dict(grad_z_q=torch.randn_like(z), grad_entropy=torch.tensor(0.3, device=device), z=z,
                codebook=codebook, idx=idx, row_stats=row_stats, soft_codes=soft, code_coef=coef, gemm_plan=plan)


def _call_backward(args):
    return torch.ops.dcae_ext._ibq_backward(*args.values(), 0.5, 8)


@pytest.mark.parametrize("name", ["grad_z_q", "grad_entropy", "idx", "row_stats", "soft_codes", "code_coef"])
def test_backward_checks_the_device_of_every_tensor(name):
    # A tensor on another device (a CPU scalar given to the CUDA kernel was an illegal memory
    # access); with one device here, the CPU kernel is called directly with a meta tensor.
    args = _backward_args("cpu")
    args[name] = args[name].to("meta")
    cpu_kernel = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    with pytest.raises(ValueError, match=f"argument '{name}': is on meta"):
        torch.ops.dcae_ext._ibq_backward.default.redispatch(cpu_kernel, *args.values(), 0.5, 8)


@pytest.mark.parametrize("name,bad,match", [
    ("grad_z_q", lambda t: t.double(), "dtype"),
    ("grad_z_q", lambda t: t[:, :4], "expected shape"),
    ("grad_entropy", lambda t: torch.ones(2), "expected one element"),
    ("grad_entropy", lambda t: torch.tensor(1), "floating-point"),
    ("idx", lambda t: t.int(), "int64"),
    ("row_stats", lambda t: t[:, :3], "expected"),
    ("soft_codes", lambda t: t.double(), "expected"),
    ("code_coef", lambda t: t[:5], "expected"),
])
def test_backward_checks_dtypes_and_shapes(name, bad, match):
    args = _backward_args("cpu")
    args[name] = bad(args[name])
    with pytest.raises(ValueError, match=f"argument '{name}'.*{match}"):
        _call_backward(args)


@pytest.mark.parametrize("device", devices())
def test_backward_reads_strided_saved_tensors_by_their_values(device):
    # The epilogue kernels read row_stats and code_coef through raw pointers: a column-major
    # row_stats and a strided code_coef (a direct torch.ops caller's) gave gradients off by 1e5.
    args = _backward_args(device)
    want = _call_backward(args)
    args["row_stats"] = args["row_stats"].t().contiguous().t()
    args["code_coef"] = torch.stack([args["code_coef"], torch.full_like(args["code_coef"], 7.0)], 1)[:, 0]
    assert not args["row_stats"].is_contiguous() and not args["code_coef"].is_contiguous()
    for got, expected in zip(_call_backward(args), want):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.cuda
def test_backward_rejects_a_cpu_scalar_on_cuda():
    args = _backward_args("cuda")
    args["grad_entropy"] = torch.tensor(0.3)
    with pytest.raises(ValueError, match="argument 'grad_entropy'"):
        _call_backward(args)
