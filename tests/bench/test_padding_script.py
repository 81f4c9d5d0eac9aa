"""benchmarks/padding_quality.py runs on tiny models of both kinds and writes one record per
(model, padding amount, mode), the best-band counts splitting the images between the padding modes."""
import json
import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "padding_quality.py")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_models_give_a_record_per_pad_and_mode(tmp_path, monkeypatch, capsys):
    import torch

    from dcae_ext.models import DCAE, IBQTokenizer
    from dcae_ext.models.padding import PAD_MODES

    torch.manual_seed(0)
    DCAE.from_config("tiny").save_pretrained(tmp_path / "dcae")
    IBQTokenizer.from_config("tiny").save_pretrained(tmp_path / "ibq")
    results = tmp_path / "padding.jsonl"
    monkeypatch.setattr(sys, "argv", ["padding_quality.py", "--model", str(tmp_path / "dcae"), "--model",
                                      str(tmp_path / "ibq"), "--crop", "32", "--limit", "2", "--results", str(results)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert exit_info.value.code == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    pads = {"DCAE": [1, 4, 7], "IBQTokenizer": [1, 2, 3]}
    for model_class, expected in pads.items():
        mine = [r for r in records if r["model_class"] == model_class]
        assert sorted({r["pad"] for r in mine}) == expected and len(mine) == len(expected) * (len(PAD_MODES) + 1)
        for pad in expected:
            row = [r for r in mine if r["pad"] == pad]
            assert sum(r["best_band"] for r in row if r["mode"] in PAD_MODES) == 2
            assert all(r["size"] == 32 - pad and r["images"] == 2 for r in row)
    assert "appended 24 records" in capsys.readouterr().out
