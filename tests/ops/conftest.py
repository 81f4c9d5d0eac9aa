import pytest

from dcae_ext.testing import forbid_reference_fallback


@pytest.fixture(autouse=True)
def _kernels_must_run(monkeypatch):
    """Every op test checks a kernel: a call that would silently run the reference (library not
    built, op missing from it, CUDA kernels not compiled) fails the test instead."""
    forbid_reference_fallback(monkeypatch)
