import pytest
import torch

from dcae_ext import ops
from dcae_ext.ops import _library


@pytest.mark.parametrize("call", [
    lambda: ops.linear_attention(*[torch.randn(1, 1, 4, 5)] * 3),
    lambda: ops.pixel_unshuffle_mean(torch.randn(1, 4, 4, 4), 2, 4),
    lambda: ops.ibq_quantize(torch.randn(3, 4), torch.randn(5, 4)),
])
def test_an_op_without_its_kernel_fails_the_test(monkeypatch, call):
    # tests/ops/conftest.py turns a silent fallback to the reference into a failure: here every
    # kernel is made to look absent, as when the compiled library was not built.
    monkeypatch.setattr(_library, "_registered_ops", set())
    with pytest.raises(pytest.fail.Exception, match="would run its reference, not its kernel"):
        call()


def test_reference_mode_still_runs_the_reference():
    ops.use_reference(True)
    ops.linear_attention(*[torch.randn(1, 1, 4, 5)] * 3)
