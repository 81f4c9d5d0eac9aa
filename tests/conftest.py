import pytest
import torch

from dcae_ext.ops import use_reference


@pytest.fixture(autouse=True)
def _kernels_on():
    """Every test starts with the kernels on (reference mode off) and restores the setting."""
    previous = use_reference(False)
    yield
    use_reference(previous)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
