"""`dcae-ext encode / tokenize / decode` in one process: round trips, readers, layouts, resume
bookkeeping, bad arguments. (Separate processes: SIGKILL + resume and torchrun, in test_encode_processes.py.)"""
import json
import os
import re
import shutil

import pytest
import torch
from safetensors import safe_open

from dcae_ext.cli import main
from dcae_ext.data import LatentDataset, TokenDataset
from dcae_ext.data.images import embedded_image_paths
from dcae_ext.data.shards import completed_shards
from dcae_ext.encode.plan import OUTPUTS
from dcae_ext.models import DCAE, IBQTokenizer
from dcae_ext.output_folder import record_names

from data_helpers import BAD, cli_error, write_image


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The embedded sample photographs, copied into a folder as a user's dataset would be."""
    folder = tmp_path_factory.mktemp("samples")
    for path in embedded_image_paths():
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    DCAE.from_config("tiny").save_pretrained(root / "dcae")
    IBQTokenizer.from_config("tiny").save_pretrained(root / "ibq")
    return {"latents": str(root / "dcae"), "tokens": str(root / "ibq")}


def _eval_psnr(model, data, resolution, out):
    assert main(["eval", "--model", model, "--data", str(data), "--resolution", str(resolution), "--device", "cpu",
                 "--out", str(out)]) == 0
    return json.loads((out / "eval.json").read_text())["metrics"]["psnr"]


def _decoded_psnr(capsys, latents, out):
    capsys.readouterr()
    assert main(["decode", "--input", str(latents), "--out", str(out), "--device", "cpu"]) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PSNR")][0]
    return float(line.split()[1])


@pytest.mark.parametrize("kind", ["latents", "tokens"])
def test_encode_decode_psnr_equals_eval(kind, samples, tiny_models, tmp_path, capsys):
    command = "encode" if kind == "latents" else "tokenize"
    out = tmp_path / kind
    assert main([command, "--model", tiny_models[kind], "--data", str(samples), "--out", str(out),
                 "--resolution", "32", "--shard-size", "5", "--batch-size", "3", "--workers", "2",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    count = len(embedded_image_paths())
    assert f"{count} images in" in printed and "images/s" in printed
    decoded = _decoded_psnr(capsys, out, tmp_path / "decoded")
    assert len(os.listdir(tmp_path / "decoded")) == count
    expected = _eval_psnr(tiny_models[kind], samples, 32, tmp_path / "eval")
    assert decoded == pytest.approx(expected, abs=2e-3)

    reader = LatentDataset(out) if kind == "latents" else TokenDataset(out)
    with pytest.raises(ValueError, match=f"holds .{kind}.*use {type(reader).__name__}"):
        (TokenDataset if kind == "latents" else LatentDataset)(out)
    assert len(reader) == count and reader.path(0).endswith(sorted(os.listdir(samples))[0])
    loader = torch.utils.data.DataLoader(reader, batch_size=4, num_workers=2)
    batch = next(iter(loader))
    if kind == "latents":
        assert batch.shape == (4, 4, 4, 4) and batch.dtype == torch.float32
    else:
        assert batch.shape == (4, 8, 8) and batch.dtype == torch.int64 and int(batch.max()) < reader.num_codes
        assert reader.stored(0).dtype == torch.int32


def test_latents_are_unscaled_in_the_model_dtype_with_the_factor_beside(tmp_path, capsys):
    model = DCAE.from_config("tiny")
    model.scaling_factor = 0.25
    model.config.scaling_factor = 0.25
    model.save_pretrained(tmp_path / "model")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(20, 30), (20, 30), (17, 9)]):
        write_image(folder / f"{i}.png", h, w, i)
    out = tmp_path / "bf16"
    assert main(["encode", "--model", str(tmp_path / "model"), "--data", str(folder), "--out", str(out),
                 "--keep-size", "--dtype", "bf16", "--workers", "0", "--device", "cpu"]) == 0
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["size"] for r in index] == [[20, 30], [20, 30], [17, 9]]
    assert [r["shape"] for r in index] == [[4, 3, 4], [4, 3, 4], [4, 3, 2]]  # padded up to the factor 8
    with safe_open(str(out / index[2]["shard"]), "pt") as shard:
        assert shard.metadata() == {"scaling_factor": "0.25"}
        stored = shard.get_tensor(str(index[2]["offset"]))
    assert stored.dtype == torch.bfloat16
    model.eval()
    with torch.no_grad():
        from dcae_ext.data.images import load_image
        from dcae_ext.models.padding import pad_to_multiple
        x = pad_to_multiple(load_image(str(folder / "2.png"), None)[None] * 2 - 1, 8)
        expected = model.to(torch.bfloat16).encode(x.to(torch.bfloat16))[0]
    assert torch.equal(stored, expected)
    latents = LatentDataset(out)
    assert torch.equal(latents[2], stored.float() * 0.25)
    assert torch.equal(LatentDataset(out, scaled=False, dtype=None)[2], stored)
    assert main(["decode", "--input", str(out), "--out", str(tmp_path / "decoded"), "--device", "cpu"]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "decoded" / "2.png").size == (9, 17)  # cropped back to the source size


def test_unreadable_images_are_skipped_and_listed(corrupt_folder, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["encode", "--model", tiny_models["latents"], "--data", str(corrupt_folder), "--out", str(out),
            "--resolution", "16", "--shard-size", "2", "--workers", "2", "--device", "cpu"]
    assert main(args) == 0
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(s["path"]) for s in skipped) == sorted(BAD)
    assert len(LatentDataset(out)) == 3
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["num_images"] == 3 and metadata["num_skipped"] == 2 and "encode --model" in metadata["command"]
    captured = capsys.readouterr()
    assert "2 unreadable skipped" in captured.out and "half.png" in captured.err
    with pytest.raises(SystemExit, match="--strict-data: cannot read image"):
        main(args[:6] + [str(tmp_path / "strict")] + args[7:] + ["--strict-data"])


def test_resume_writes_only_missing_shards_and_cleans_up(samples, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["encode", "--model", tiny_models["latents"], "--data", str(samples), "--out", str(out),
            "--resolution", "16", "--shard-size", "3", "--workers", "0", "--device", "cpu"]
    assert main(args) == 0
    original = {name: (out / "shards" / name).read_bytes() for name in os.listdir(out / "shards")}
    index = (out / "index.jsonl").read_text()
    # as a kill would leave it: shard 2 written without its marker, shard 4 not at all, a temporary
    os.unlink(out / "shards" / "000002.json")
    (out / "shards" / "000002.safetensors").write_bytes(b"torn")
    os.unlink(out / "shards" / "000004.json")
    os.unlink(out / "shards" / "000004.safetensors")
    (out / "shards" / ".000005.safetensors.x.tmp").write_bytes(b"half")
    (out / "index.jsonl").unlink()
    before = {n: os.stat(out / "shards" / n).st_mtime_ns for n in ("000000.safetensors", "000003.safetensors")}
    capsys.readouterr()
    assert main(args) == 0
    assert "continuing an interrupted run" in capsys.readouterr().out
    assert {name: (out / "shards" / name).read_bytes() for name in os.listdir(out / "shards")} == original
    assert (out / "index.jsonl").read_text() == index
    assert before == {n: os.stat(out / "shards" / n).st_mtime_ns for n in before}  # finished shards untouched
    assert completed_shards(str(out)) == set(range(6))
    assert main(args) == 0 and "nothing left to do" in capsys.readouterr().out


def test_bad_arguments_stop_before_any_output(samples, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--data", str(samples), "--out", str(out), "--device", "cpu", "--workers", "0"]
    cases = [(["encode", "--model", tiny_models["tokens"]], "--model: .* IBQ tokenizer.*dcae-ext tokenize"),
             (["tokenize", "--model", tiny_models["latents"]], "--model: .* DC-AE.*dcae-ext encode"),
             (["encode", "--model", tiny_models["latents"], "--resolution", "30"], "--resolution: 30 .* 24 or 32"),
             (["encode", "--model", tiny_models["latents"], "--tile", "12"], "--tile"),
             (["encode", "--model", tiny_models["latents"], "--batch-size", "0"], "--batch-size"),
             (["encode", "--model", tiny_models["latents"], "--device", "cdua"], "--device"),
             (["encode", "--model", tiny_models["latents"], "--data", str(tmp_path / "none")], "--data")]
    for argv, message in cases:
        assert re.search(message, cli_error(argv[:1] + base + argv[1:], capsys))  # the flag in argv comes last, wins
        assert not out.exists()
    with pytest.raises(SystemExit, match="--input: .* no metadata.json"):
        main(["decode", "--input", str(samples), "--out", str(out)])
    assert not out.exists()


def test_a_changed_run_is_refused_unless_overwritten(samples, tiny_models, tmp_path):
    out = tmp_path / "out"
    args = ["encode", "--model", tiny_models["latents"], "--data", str(samples), "--out", str(out),
            "--resolution", "16", "--workers", "0", "--device", "cpu"]
    assert main(args) == 0
    with pytest.raises(SystemExit, match="--out: .*resolution 16 -> 24.*--overwrite"):
        main(args[:-6] + ["--resolution", "24", "--workers", "0", "--device", "cpu"])
    assert main(args[:-6] + ["--resolution", "24", "--workers", "0", "--device", "cpu", "--overwrite"]) == 0
    assert LatentDataset(out)[0].shape == (4, 3, 3)
    write_image(samples / "zz_new.png", 20, 20, 0)  # the folder grew: resuming would drop the new image
    try:
        with pytest.raises(SystemExit, match=r"image list changed \(\d+ -> \d+ images"):
            main(args)
    finally:
        os.unlink(samples / "zz_new.png")
    (tmp_path / "early").mkdir()  # killed before its plan was written: a fresh start, no --overwrite needed
    record_names(str(tmp_path / "early"), OUTPUTS)  # what it writes first
    (tmp_path / "early" / "shards").mkdir()
    (tmp_path / "early" / "sources.txt").write_text("half a list")
    assert main(args[:6] + [str(tmp_path / "early")] + args[7:]) == 0
    (tmp_path / "users").mkdir()  # the same names, but no run recorded writing them: the user's
    (tmp_path / "users" / "shards").mkdir()
    with pytest.raises(SystemExit, match="not empty"):
        main(args[:6] + [str(tmp_path / "users")] + args[7:])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        main(args[:6] + [str(tmp_path / "other")] + args[7:])


def test_a_run_continued_with_other_weights_at_the_same_path_is_refused(samples, tiny_models, tmp_path, capsys):
    """The plan names the model by its path; a resumed run must not add another model's latents."""
    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_models["latents"], model)
    args = ["encode", "--model", str(model), "--data", str(samples), "--out", str(out), "--resolution", "16",
            "--shard-size", "3", "--workers", "0", "--device", "cpu"]
    assert main(args) == 0
    (out / "shards" / "000002.json").unlink()  # as an interrupted run leaves it
    torch.manual_seed(1)
    DCAE.from_config("tiny").save_pretrained(model)  # retrained, say, at the same path
    with pytest.raises(SystemExit, match=f"--out: .*the weights of {re.escape(str(model))} changed.*--overwrite"):
        main(args)
    capsys.readouterr()  # decoding the earlier, finished run with the weights now at that path: a warning
    assert main(["decode", "--input", str(out), "--out", str(tmp_path / "decoded"), "--device", "cpu",
                 "--no-psnr", "--limit", "1"]) == 0
    assert f"weights of {model} changed since they encoded" in capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    del plan["weights_sha256"]  # a run started before plans recorded the weights continues as before
    (out / "plan.json").write_text(json.dumps(plan))
    assert main(args) == 0


def test_tiled_tokenize_sees_only_tiles_and_agrees_with_whole_images():
    from dcae_ext.encode.codecs import TokenCodec

    torch.manual_seed(0)
    model = IBQTokenizer.from_config("tiny")
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8), size=(128, 96), mode="bilinear")
    whole = TokenCodec(model, torch.float32).encode(images)
    assert torch.equal(TokenCodec(model, torch.float32, tile=128).encode(images), whole)  # fits in one tile
    sizes = []
    hook = model.encoder.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[-2:])))
    tiled = TokenCodec(model, torch.float32, tile=64).encode(images)
    hook.remove()
    assert set(sizes) == {(64, 64)} and tiled.shape == whole.shape == (2, 32, 24) and tiled.dtype == torch.int32
    assert (tiled == whole).float().mean() > 0.9
    with pytest.raises(ValueError, match="'tile'"):
        TokenCodec(model, torch.float32, tile=6)


def test_half_precision_tokenize_keeps_a_float32_codebook(tmp_path):
    from dcae_ext.encode.codecs import TokenCodec
    from dcae_ext.models import load_model_from_path

    torch.manual_seed(0)
    model = IBQTokenizer.from_config("tiny")
    exact_codebook = model.quantizer.codebook.detach().clone()
    model.save_pretrained(tmp_path / "ibq")
    codec = TokenCodec(model, torch.bfloat16)
    assert model.post_quant_conv.weight.dtype == torch.bfloat16
    assert model.quantizer.codebook.dtype == torch.float32 and torch.equal(model.quantizer.codebook, exact_codebook)
    images = torch.rand(2, 3, 32, 32)
    latent = model.quant_conv(model.encoder(codec._input(images)))
    expected = (latent.float().movedim(1, -1) @ exact_codebook.t()).argmax(-1).to(torch.int32)
    assert torch.equal(codec.encode(images), expected)
    for loaded in (IBQTokenizer.from_pretrained(tmp_path / "ibq", torch_dtype=torch.bfloat16),
                   load_model_from_path(tmp_path / "ibq", torch_dtype=torch.bfloat16)):
        assert loaded.quantizer.codebook.dtype == torch.float32 and torch.equal(loaded.quantizer.codebook, exact_codebook)
        assert loaded.post_quant_conv.weight.dtype == torch.bfloat16
