"""from_pretrained behaves as diffusers' does (eval mode, torch_dtype, subfolder), load errors say
what a folder holds, and efficientvit-format folders carry the `model_name` efficientvit reads."""
import json

import pytest
import torch

from dcae_ext.models import DCAE, IBQTokenizer, get_config, load_model_from_path, tiny_config
from dcae_ext.models.dcae.config import (EFFICIENTVIT_MODEL_NAMES, DCAEConfig, efficientvit_model_name,
                                         find_preset_in)


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_from_pretrained_returns_eval_mode_in_the_dtype_from_a_subfolder(tmp_path):
    torch.manual_seed(0)
    DCAE(tiny_config(8)).save_pretrained(tmp_path / "vae")
    model = DCAE.from_pretrained(tmp_path, subfolder="vae")
    assert not model.training and all(not m.training for m in model.modules())
    norms = _batch_norms(model)
    assert norms, "the tiny preset's first decoder stage has BatchNorm"
    before = [n.running_mean.clone() for n in norms]
    with torch.no_grad():
        model.decode(model.encode(torch.randn(2, 3, 32, 32) * 3))
    assert all(torch.equal(a, n.running_mean) for a, n in zip(before, norms))  # statistics untouched
    half = DCAE.from_pretrained(tmp_path / "vae", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and not half.training
    assert not load_model_from_path(tmp_path / "vae").training


def test_dcae_loader_says_what_a_foreign_config_json_holds(tmp_path):
    IBQTokenizer("tiny").save_pretrained(tmp_path / "ibq")
    with pytest.raises(ValueError, match="config.json is not a DC-AE config: it holds an IBQ tokenizer"):
        DCAE.from_pretrained(tmp_path / "ibq")
    assert isinstance(load_model_from_path(tmp_path / "ibq"), IBQTokenizer)


def test_ema_of_a_saved_tokenizer_folder_is_refused_not_ignored(tmp_path):
    IBQTokenizer("tiny").save_pretrained(tmp_path / "ibq")
    with pytest.raises(ValueError, match="holds one set of weights"):
        load_model_from_path(tmp_path / "ibq", ema=True)
    with pytest.raises(ValueError, match="argument 'use_ema'"):
        IBQTokenizer.from_pretrained(tmp_path / "ibq", use_ema=True)


@pytest.mark.parametrize("name", EFFICIENTVIT_MODEL_NAMES + (
    "dc-ae-f32c32-sana-1.1", "dc-ae-lite-f32c32-sana-1.1", "dc-ae-f32c128-1.1", "dc-ae-f32c32-in-1.0-256px"))
def test_preset_is_recognised_from_a_diffusers_config(name):
    diffusers_dict = get_config(name).to_diffusers_dict()  # what a diffusers folder's config.json holds
    config = DCAEConfig.from_dict(diffusers_dict)
    assert config.name is None
    expected = "dc-ae-f32c32-sana-1.0" if name == "dc-ae-f32c32-sana-1.1" else name  # same model in efficientvit
    assert efficientvit_model_name(config) == expected
    if "sana" in name:  # diffusers' published SANA configs spell the downsample type "Conv"
        assert efficientvit_model_name(config.replace(downsample_block_type="Conv")) == expected
    assert efficientvit_model_name(tiny_config(32)) is None
    assert efficientvit_model_name(config.replace(latent_channels=16)) is None


def test_dc_ae_lite_is_found_by_its_hugging_face_names():
    lite = get_config("dc-ae-lite-f32c32-sana-1.1")
    assert get_config("dc-ae-lite-f32c32-diffusers") == lite == get_config("dc-ae-lite-f32c32")
    assert find_preset_in("/models/dc-ai/dc-ae-lite-f32c32-diffusers/vae") == "dc-ae-lite-f32c32-sana-1.1"
    assert find_preset_in("/models/dc-ae-f32c32-sana-1.1/model.safetensors") == "dc-ae-f32c32-sana-1.1"
    assert find_preset_in("/models/tiny-structured") is None


def test_diffusers_model_saved_as_efficientvit_loads_in_efficientvits_loader(tmp_path, monkeypatch):
    """efficientvit's DCAE_HF(DCAE, PyTorchModelHubMixin).__init__(self, model_name) gets
    `model_name` from config.json (huggingface_hub's mixin) and asserts it is registered; the
    weights come from model.safetensors (the key mapping is tested in test_dcae_weights.py)."""
    hub_mixin = pytest.importorskip("huggingface_hub").PyTorchModelHubMixin
    import dcae_ext.models.formats.dcae_weights as weights

    seen = {}

    class StandInDCAE_HF(torch.nn.Module, hub_mixin):
        def __init__(self, model_name: str):
            super().__init__()
            assert model_name in EFFICIENTVIT_MODEL_NAMES, f"{model_name} is not supported"
            seen["model_name"] = model_name

    diffusers_dict = get_config("dc-ae-f64c128-mix-1.0").to_diffusers_dict()
    with torch.device("meta"):  # the full-size model, without allocating its weights
        model = DCAE.from_config(DCAEConfig.from_dict(diffusers_dict))
    monkeypatch.setattr(weights, "to_efficientvit", lambda m: {"stand.in": torch.zeros(1)})
    model.save_pretrained(tmp_path, format="efficientvit")
    assert json.loads((tmp_path / "config.json").read_text())["model_name"] == "dc-ae-f64c128-mix-1.0"
    assert (tmp_path / "model.safetensors").is_file()
    StandInDCAE_HF.from_pretrained(str(tmp_path))
    assert seen["model_name"] == "dc-ae-f64c128-mix-1.0"
