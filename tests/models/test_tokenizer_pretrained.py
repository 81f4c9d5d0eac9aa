"""IBQTokenizer.save_pretrained -> from_pretrained: the same tokens and images bit for bit, and a
config= that contradicts the saved config.json refused (not built instead of the saved model)."""
import json

import pytest
import torch

from dcae_ext.models import IBQTokenizer
from dcae_ext.models.ibq.tokenizer import IBQConfig, get_ibq_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = IBQTokenizer("tiny").eval()
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return tokenizer, folder


def _with(preset: str, **changes) -> IBQConfig:
    """`preset` with `changes`; "backbone.x" keys change the backbone's field x."""
    values = get_ibq_config(preset).to_dict()
    for key, value in changes.items():
        if key.startswith("backbone."):
            values["backbone"][key.split(".", 1)[1]] = value
        else:
            values[key] = value
    return IBQConfig.from_dict(values)


def test_round_trip_gives_the_same_tokens_and_images_bit_for_bit(saved):
    tokenizer, folder = saved
    loaded = IBQTokenizer.from_pretrained(folder)
    x = torch.rand(2, 3, 36, 50) * 2 - 1  # odd sizes: padded
    with torch.no_grad():
        indices = tokenizer.encode(x, pad=True)
        assert torch.equal(loaded.encode(x, pad=True), indices)
        assert torch.equal(loaded.decode_indices(indices, size=x.shape[-2:]),
                           tokenizer.decode_indices(indices, size=x.shape[-2:]))
    assert loaded.config == tokenizer.config


@pytest.mark.parametrize("changes,field", [
    ({"backbone.decoder_act_fns": "relu"}, "backbone.decoder_act_fns"),  # same names and shapes: loads silently
    ({"entropy_weight": 0.5}, "entropy_weight"),
    ({"beta_on_codebook_term": False}, "beta_on_codebook_term"),
    ({"num_codes": 256}, "num_codes"),
])
def test_a_config_that_contradicts_the_saved_one_is_refused(saved, changes, field):
    _, folder = saved
    with pytest.raises(ValueError, match=rf"argument 'config'.*{field}: given .*, saved .*leave out config"):
        IBQTokenizer.from_pretrained(folder, config=_with("tiny", **changes))


def test_a_preset_of_the_other_backbone_is_refused(saved):
    _, folder = saved
    with pytest.raises(ValueError, match="argument 'config'.*backbone.type: given 'vqgan', saved 'dc-ae'"):
        IBQTokenizer.from_pretrained(folder, config="ibq-f16-1024")


def test_a_config_that_agrees_with_the_saved_one_loads(saved):
    tokenizer, folder = saved
    for config in ("tiny", get_ibq_config("tiny").to_dict(), _with("tiny", name="my-tokenizer")):
        loaded = IBQTokenizer.from_pretrained(folder, config=config)  # the name alone may differ
        for (name, mine), theirs in zip(loaded.state_dict().items(), tokenizer.state_dict().values()):
            assert torch.equal(mine, theirs), name


def test_a_config_json_this_version_cannot_read_leaves_config_to_decide(saved, tmp_path):
    tokenizer, folder = saved
    values = json.loads((folder / "config.json").read_text())
    tokenizer.save_pretrained(tmp_path / "newer")
    (tmp_path / "newer" / "config.json").write_text(json.dumps(dict(values, field_of_a_later_version=1)))
    with pytest.raises(ValueError, match="unknown fields"):
        IBQTokenizer.from_pretrained(tmp_path / "newer")
    assert IBQTokenizer.from_pretrained(tmp_path / "newer", config="tiny").config == tokenizer.config


def test_load_model_from_path_passes_config_on_to_the_tokenizer_loader(saved, tmp_path, capsys):
    """`--config` of eval / reconstruct reaches an IBQ folder as it reaches DC-AE weights: checked against
    the saved config.json, never dropped without a word."""
    from dcae_ext.cli import main
    from dcae_ext.models import load_model_from_path

    tokenizer, folder = saved
    with pytest.raises(ValueError, match="argument 'config'.*backbone.type: given 'vqgan', saved 'dc-ae'"):
        load_model_from_path(folder, config="ibq-f16-1024")
    assert load_model_from_path(folder, config="tiny").config == tokenizer.config
    assert main(["eval", "--model", str(folder), "--config", "ibq-f16-16384", "--out", str(tmp_path / "eval"),
                 "--limit", "1", "--resolution", "32", "--device", "cpu", "--workers", "0"]) == 1
    assert "contradicts" in capsys.readouterr().err and not (tmp_path / "eval").exists()
