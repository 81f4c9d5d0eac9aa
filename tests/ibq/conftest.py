import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Small models: one thread is faster, and far faster on a shared, loaded CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
