import warnings

import pytest
import torch

from dcae_ext.models.dcae.model import DCAE
from dcae_ext.train.config import make_config

from train_helpers import micro_dcae_config


@pytest.fixture
def micro_dcae():
    def build(norm="rms_norm"):
        torch.manual_seed(0)
        return DCAE(micro_dcae_config(norm))
    return build


@pytest.fixture
def micro_ibq():
    from dcae_ext.models.ibq.tokenizer import IBQConfig, IBQTokenizer

    def build(num_codes=64, dim=8, entropy_weight=0.05):
        torch.manual_seed(0)
        return IBQTokenizer(IBQConfig(micro_dcae_config(), num_codes=num_codes, dim=dim,
                                      entropy_weight=entropy_weight))
    return build


@pytest.fixture
def quick_config(tmp_path):
    """Small, quiet, file-light settings; keyword arguments override."""
    def build(model="dcae", **overrides):
        values = dict(steps=4, batch_size=2, resolution=16, out=str(tmp_path / "run"), num_workers=0,
                      device="cpu", lpips_weight=0.0, log_every=1, checkpoint_every=0, image_every=0,
                      disc_channels=8, disc_layers=2, warmup_steps=0)
        values.update(overrides)
        return make_config(model, **values)
    return build


@pytest.fixture(autouse=True)
def _small_models_one_thread(one_thread):
    """Every test here runs small models: one thread (see tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _quiet_random_lpips():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS: no trunk weights")
        yield
