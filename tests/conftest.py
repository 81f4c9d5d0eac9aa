import pytest
import torch

from dcae_ext.ops import use_reference


@pytest.fixture
def one_thread():
    """For tests of small models: one thread is faster, and far faster on a shared, loaded CPU.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
