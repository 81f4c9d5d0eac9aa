"""The IBQ suite: which implementations race in which variant, the same numbers from each, the sweep."""
import pytest
import torch

from dcae_ext.bench import ibq


def test_the_cuda_sweep_reaches_two_to_the_twenty_codes():
    shapes = ibq.shapes("cuda", quick=False)
    assert shapes == [(8192, 2**14, 256), (8192, 2**16, 256), (8192, 2**18, 256), (16384, 2**20, 256)]
    ops = {(case.op, case.shape["K"]) for case in ibq.cases("cuda", quick=False)}
    assert ("ibq_quantize", 2**20) in ops and ("ibq_quantize+entropy", 2**20) in ops


@pytest.mark.parametrize("variant,impls", [("quantize", {"fast", "reference", "sdpa"}),
                                           ("quantize+entropy", {"fast", "reference"})])
def test_every_implementation_gives_the_same_outputs_and_gradients(variant, impls):
    workloads = ibq._workloads(variant, (9, 70, 6), torch.device("cpu"), torch.float64)
    assert set(workloads) == impls  # the entropy has no SDPA formulation
    results = {impl: (w.run_forward(), w.run_forward_backward()) for impl, w in workloads.items()}
    want_outputs, want_grads = results["reference"]
    for impl, (outputs, grads) in results.items():
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        want = want_outputs if isinstance(want_outputs, tuple) else (want_outputs,)
        for got, expected in zip(outputs + grads, want + want_grads):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=lambda m, impl=impl: f"{impl}: {m}")


def test_the_sdpa_record_names_the_attention_kernel():
    workloads = ibq._workloads("quantize", (9, 70, 8), torch.device("cpu"), torch.float32)
    assert workloads["sdpa"].extra["sdpa_backend"] in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH",
                                                       "CUDNN_ATTENTION", "OVERRIDEABLE")
    assert workloads["fast"].extra == {}
