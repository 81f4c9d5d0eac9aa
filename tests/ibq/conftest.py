import pytest


@pytest.fixture(autouse=True)
def _small_models_one_thread(one_thread):
    """Every test here runs small models: one thread (see tests/conftest.py)."""
