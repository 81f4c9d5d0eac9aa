"""Weight formats: efficientvit key mapping, save/load round trips in both formats, load errors."""
import json

import pytest
import torch
from safetensors.torch import load_file as from_safetensors

from dcae_ext.models import DCAE, tiny_config
from dcae_ext.models.formats.dcae_weights import from_efficientvit, to_efficientvit
from dcae_configs import IN_STYLE, SANA_STYLE


def efficientvit_state(config, seed=0) -> dict:
    """A random state dict named and shaped as efficientvit's DCAE builds it (dc_ae.py, nn/ops.py):
    ResidualBlock(main, shortcut) wrappers, ConvLayer(.conv, .norm), OpSequential(.op_list), LiteMLA
    (.qkv fused, .aggreg.s.{0,1}, .proj) and GLUMBConv (.inverted_conv, .depth_conv, .point_conv)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cout, cin, k, bias=True, groups=1):
        sd[f"{name}.weight"] = torch.randn(cout, cin // groups, k, k, generator=gen)
        if bias:
            sd[f"{name}.bias"] = torch.randn(cout, generator=gen)

    def norm(name, c, kind):
        sd[f"{name}.weight"] = torch.randn(c, generator=gen)
        sd[f"{name}.bias"] = torch.randn(c, generator=gen)
        if kind == "batch_norm":
            sd[f"{name}.running_mean"] = torch.randn(c, generator=gen)
            sd[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
            sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    def block(name, kind, width, norm_kind, scales):
        if kind == "ResBlock":
            conv(f"{name}.main.conv1.conv", width, width, 3)
            conv(f"{name}.main.conv2.conv", width, width, 3, bias=False)
            norm(f"{name}.main.conv2.norm", width, norm_kind)
            return
        d = config.attention_head_dim
        heads = width // d
        inner = heads * d
        ctx, local = f"{name}.context_module.main", f"{name}.local_module.main"
        conv(f"{ctx}.qkv.conv", 3 * inner, width, 1, bias=False)
        for s, k in enumerate(scales):
            conv(f"{ctx}.aggreg.{s}.0", 3 * inner, 3 * inner, k, bias=False, groups=3 * inner)
            conv(f"{ctx}.aggreg.{s}.1", 3 * inner, 3 * inner, 1, bias=False, groups=3 * heads)
        conv(f"{ctx}.proj.conv", width, inner * (1 + len(scales)), 1, bias=False)
        norm(f"{ctx}.proj.norm", width, norm_kind)
        conv(f"{local}.inverted_conv.conv", 8 * width, width, 1)
        conv(f"{local}.depth_conv.conv", 8 * width, 8 * width, 3, groups=8 * width)
        conv(f"{local}.point_conv.conv", width, 4 * width, 1, bias=False)
        norm(f"{local}.point_conv.norm", width, "rms_norm")

    widths, layers = config.encoder_block_out_channels, config.encoder_layers_per_block
    unshuffle = config.downsample_block_type == "pixel_unshuffle"
    if layers[0] > 0:
        conv("encoder.project_in.conv", widths[0], 3, 3)
    elif unshuffle:
        conv("encoder.project_in.conv.conv", widths[1] // 4, 3, 3)
    else:
        conv("encoder.project_in.conv", widths[1], 3, 3)
    for i, (width, depth) in enumerate(zip(widths, layers)):
        for j in range(depth):
            block(f"encoder.stages.{i}.op_list.{j}", config.encoder_block_types[i], width, "rms_norm",
                  config.encoder_qkv_multiscales[i])
        if i < len(widths) - 1 and depth > 0:
            if unshuffle:
                conv(f"encoder.stages.{i}.op_list.{depth}.main.conv.conv", widths[i + 1] // 4, width, 3)
            else:
                conv(f"encoder.stages.{i}.op_list.{depth}.main.conv", widths[i + 1], width, 3)
    conv("encoder.project_out.main.op_list.0.conv", config.latent_channels, widths[-1], 3)

    widths, layers = config.decoder_block_out_channels, config.decoder_layers_per_block
    shuffle = config.upsample_block_type == "pixel_shuffle"
    conv("decoder.project_in.main.conv", widths[-1], config.latent_channels, 3)
    for i, (width, depth) in enumerate(zip(widths, layers)):
        first = 0
        if i < len(widths) - 1 and depth > 0:
            conv(f"decoder.stages.{i}.op_list.0.main.conv.conv", width * (4 if shuffle else 1), widths[i + 1], 3)
            first = 1
        for j in range(depth):
            block(f"decoder.stages.{i}.op_list.{first + j}", config.decoder_block_types[i], width,
                  config.decoder_norm_types[i], config.decoder_qkv_multiscales[i])
    last = widths[0] if layers[0] > 0 else widths[1]
    norm("decoder.project_out.op_list.0", last, "rms_norm")
    if layers[0] > 0:
        conv("decoder.project_out.op_list.2.conv", 3, last, 3)
    else:
        conv("decoder.project_out.op_list.2.conv.conv", 3 * (4 if shuffle else 1), last, 3)
    return sd


@pytest.mark.parametrize("config", [IN_STYLE, SANA_STYLE], ids=["in_style", "sana_style"])
def test_efficientvit_mapping_covers_every_key(config):
    model = DCAE(config)
    state = efficientvit_state(config)
    ours, unused = from_efficientvit(model, state)
    assert unused == []
    assert set(ours) == set(model.state_dict())
    for key, value in ours.items():
        assert value.shape == model.state_dict()[key].shape, key
    back = to_efficientvit(model, ours)
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_qkv_split_by_thirds_of_output_channels():
    model = DCAE(IN_STYLE)
    state = efficientvit_state(IN_STYLE)
    ours, _ = from_efficientvit(model, state)
    fused = state["encoder.stages.2.op_list.0.context_module.main.qkv.conv.weight"][:, :, 0, 0]
    third = fused.shape[0] // 3
    assert torch.equal(ours["encoder.down_blocks.2.0.attn.to_q.weight"], fused[:third])
    assert torch.equal(ours["encoder.down_blocks.2.0.attn.to_k.weight"], fused[third:2 * third])
    assert torch.equal(ours["encoder.down_blocks.2.0.attn.to_v.weight"], fused[2 * third:])


def test_mapping_agrees_with_diffusers_converter():
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    state = efficientvit_state(IN_STYLE.replace(decoder_qkv_multiscales=((),) * 4))  # converter: one scale at most
    config = IN_STYLE.replace(decoder_qkv_multiscales=((),) * 4)
    theirs = single_file_utils.convert_autoencoder_dc_checkpoint_to_diffusers(dict(state))
    ours, _ = from_efficientvit(DCAE(config), state)
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_efficientvit_checkpoint_loads_from_pt_with_state_dict(tmp_path):
    state = efficientvit_state(IN_STYLE, seed=3)
    torch.save({"state_dict": state}, tmp_path / "model.pt")
    model = DCAE.from_pretrained(tmp_path / "model.pt", config=IN_STYLE)
    assert torch.equal(model.state_dict()["decoder.norm_out.weight"], state["decoder.project_out.op_list.0.weight"])


@pytest.mark.parametrize("fmt", ["diffusers", "efficientvit"])
def test_save_load_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    model = DCAE.from_config("tiny").eval()
    model.save_pretrained(tmp_path, format=fmt)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = DCAE.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)


def test_efficientvit_config_json_names_the_preset(tmp_path):
    DCAE.from_config("tiny").save_pretrained(tmp_path, format="efficientvit")
    meta = json.loads((tmp_path / "config.json").read_text())
    assert "dcae_ext_config" in meta and "model_name" not in meta  # tiny is not an efficientvit model
    # efficientvit's own config.json names the model; a preset name in the path also works.
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "tiny"}))
    assert DCAE.from_pretrained(tmp_path).config == tiny_config(8, name="tiny")


def test_load_reports_missing_unexpected_and_shape_errors_by_name(tmp_path):
    from safetensors.torch import save_file

    model = DCAE.from_config("tiny")
    model.save_pretrained(tmp_path)
    state = dict(model.state_dict())
    state.pop("decoder.conv_in.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys.*decoder\.conv_in\.bias.*unexpected keys.*encoder\.extra"):
        DCAE.from_pretrained(tmp_path)
    with pytest.warns(RuntimeWarning, match="decoder.conv_in.bias"):
        DCAE.from_pretrained(tmp_path, strict=False)
    state = dict(model.state_dict())
    state["encoder.conv_out.weight"] = torch.zeros(1, 2, 3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatches.*encoder\.conv_out\.weight"):
        DCAE.from_pretrained(tmp_path, strict=False)


def test_unknown_config_source_raises(tmp_path):
    torch.save(efficientvit_state(IN_STYLE), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="config"):
        DCAE.from_pretrained(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="unknown DC-AE preset"):
        DCAE.from_config("dc-ae-f16c1-in-9.9")
    with pytest.raises(FileNotFoundError):
        DCAE.from_pretrained(tmp_path / "nothing-here")


def test_presets_have_published_sizes_and_scaling_factors():
    expected = {"dc-ae-f32c32-in-1.0": (323.36, 32, 0.3189), "dc-ae-f64c128-in-1.0": (676.90, 64, 0.2889),
                "dc-ae-f128c512-in-1.0": (1120.68, 128, 0.4883), "dc-ae-f32c32-mix-1.0": (323.36, 32, 0.4552),
                "dc-ae-f32c32-sana-1.1": (312.25, 32, 0.41407)}
    for name, (millions, factor, scale) in expected.items():
        with torch.device("meta"):
            model = DCAE.from_config(name)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)
        assert model.spatial_compression == factor
        assert model.scaling_factor == scale


@pytest.mark.parametrize("first,second", [("diffusers", "efficientvit"), ("efficientvit", "diffusers")])
def test_saving_in_another_format_replaces_the_earlier_weights(first, second, tmp_path):
    torch.manual_seed(0)
    DCAE.from_config("tiny").save_pretrained(tmp_path, format=first)
    (tmp_path / "notes.txt").write_text("kept")
    newer = DCAE.from_config("tiny")
    newer.save_pretrained(tmp_path, format=second)
    loaded = DCAE.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), newer.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "notes.txt", "model.safetensors" if second == "efficientvit" else
         "diffusion_pytorch_model.safetensors"])


@pytest.mark.parametrize("fmt", ["diffusers", "efficientvit"])
def test_a_scaling_factor_set_on_the_model_is_saved(tmp_path, fmt):
    """The docs say to measure the factor on your data and set `model.scaling_factor`: save_pretrained
    (and so encode's shards, training checkpoints) must record that value, not the preset's."""
    config = tiny_config(8)
    model, other = DCAE(config), DCAE(config)
    model.scaling_factor = 0.37
    assert model.config.scaling_factor == 0.37
    assert other.scaling_factor == config.scaling_factor == 1.0  # models built from one config do not share it
    model.save_pretrained(tmp_path, format=fmt)
    assert DCAE.from_pretrained(tmp_path).scaling_factor == 0.37


def test_a_config_that_contradicts_the_saved_one_is_refused(tmp_path):
    """1.1 and 1.5 checkpoints have the same names and shapes: a config= (eval --config) naming the
    other one must not load 1.1 weights as a structured latent, nor replace a saved scaling factor."""
    from dcae_configs import reduced

    torch.manual_seed(0)
    plain = DCAE(reduced("dc-ae-f32c128-1.1"))
    plain.scaling_factor = 0.37
    plain.save_pretrained(tmp_path / "plain", format="efficientvit")
    with pytest.raises(ValueError, match=r"argument 'config': .*structured_latent: given True, saved False"):
        DCAE.from_pretrained(tmp_path / "plain", config=reduced("dc-ae-f32c128-1.5").replace(scaling_factor=0.37))
    with pytest.raises(ValueError, match=r"argument 'config': .*scaling_factor: given 1.0, saved 0.37"):
        DCAE.from_pretrained(tmp_path / "plain" / "model.safetensors", config=reduced("dc-ae-f32c128-1.1"))
    agreeing = DCAE.from_pretrained(tmp_path / "plain", config=plain.config.replace(name="mine"))
    assert not agreeing.config.structured_latent and agreeing.scaling_factor == 0.37
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_name": "dc-ae-f32c128-1.1-c16"}))
    named = DCAE.from_pretrained(tmp_path / "plain", config=reduced("dc-ae-f32c128-1.1"))  # a name of no preset:
    assert not named.config.structured_latent  # config= is what such a folder needs


def test_an_efficientvit_checkpoint_with_extra_or_missing_keys_is_refused(tmp_path):
    """The efficientvit format is read through the key map: a key the map does not use, a missing
    fused qkv (three of our keys) or a qkv of the wrong size is refused by name, not dropped."""
    from safetensors.torch import save_file

    DCAE(IN_STYLE).save_pretrained(tmp_path, format="efficientvit")
    state = from_safetensors(tmp_path / "model.safetensors")
    qkv = "encoder.stages.2.op_list.0.context_module.main.qkv.conv.weight"
    broken = {"extra": dict(state, **{"encoder.stages.2.op_list.9.extra": torch.zeros(1)}),
              "missing": {k: v for k, v in state.items() if k != qkv},
              "wrong qkv": dict(state, **{qkv: torch.cat([state[qkv], state[qkv][:3]])})}
    expected = {"extra": r"unexpected keys \(1\).*op_list\.9\.extra",
                "missing": r"missing keys \(3\).*down_blocks\.2\.0\.attn\.to_k\.weight",
                "wrong qkv": r"shape mismatches \(3\).*down_blocks\.2\.0\.attn\.to_q\.weight"}
    for what, weights in broken.items():
        save_file(weights, str(tmp_path / "model.safetensors"))
        with pytest.raises(ValueError, match=expected[what]):
            DCAE.from_pretrained(tmp_path)
