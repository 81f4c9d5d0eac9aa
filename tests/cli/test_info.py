import os
import subprocess
import sys

import pytest

from dcae_ext.commands import info
from dcae_ext.ops import _library


def test_info_lists_versions_and_backends():
    facts = info.collect()
    for key in ("torch", "torch cuda", "compiled backends", "cuda arch list", "gpu", "reference mode"):
        assert key in facts
    assert facts["compiled backends"] == (", ".join(_library.compiled_backends()) or "none (references only)")


@pytest.mark.skipif(os.environ.get("DCAE_EXT_EXPECT_CUDA") != "1",
                    reason="set DCAE_EXT_EXPECT_CUDA=1 where the CUDA kernels must have been built (CI does)")
def test_cuda_kernels_were_compiled():
    assert _library.LOADED, f"compiled library failed to load: {_library.LOAD_ERROR}"
    assert "cuda" in _library.compiled_backends()
    assert "9.0" in _library.CUDA_ARCH_LIST or os.environ.get("TORCH_CUDA_ARCH_LIST")


def test_cli_info_runs_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "dcae_ext.cli", "info"], capture_output=True, text=True, check=True)
    assert "compiled backends" in out.stdout


def test_reference_env_var_turns_reference_mode_on():
    env = dict(os.environ, DCAE_EXT_REFERENCE="1")
    out = subprocess.run([sys.executable, "-m", "dcae_ext.cli", "info"], capture_output=True, text=True, check=True,
                         env=env)
    line = next(line for line in out.stdout.splitlines() if line.startswith("reference mode"))
    assert line.split()[-1] == "on"
