"""TrainConfig values from files are coerced to their field's type or rejected by name, a file
cannot silently switch the model, and every field documents itself (the CLI's flags come from it)."""
import dataclasses

import pytest

from dcae_ext.train.config import FIELDS, ConfigError, TrainConfig, make_config


def _yaml(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_numbers_written_as_strings_become_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string.
    config = make_config("dcae", file=_yaml(tmp_path, "lr: 1e-4\nsteps: '20'\ngrad-checkpointing: 'yes'\n"
                                                      "frozen: decoder.*\ndisc_lr: null\nbetas: [0.5, '0.9']\n"))
    assert config.lr == 1e-4 and isinstance(config.lr, float)
    assert config.steps == 20 and isinstance(config.steps, int)
    assert config.grad_checkpointing is True and config.frozen == ["decoder.*"] and config.betas == (0.5, 0.9)


@pytest.mark.parametrize("text,option", [("lr: fast\n", "lr"), ("steps: 1.5\n", "steps"), ("preset: 3\n", "preset"),
                                         ("pin_memory: maybe\n", "pin_memory"), ("steps: null\n", "steps"),
                                         ("log_every: 0\n", "log_every"), ("device: cdua\n", "device"),
                                         ("betas: [0.9]\n", "betas"), ("learning_rate: 1\n", "learning_rate"),
                                         ("lr: .inf\n", "lr"), ("grad_clip: nan\n", "grad_clip")])
def test_bad_values_from_a_file_name_the_file_and_the_option(tmp_path, text, option):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        make_config("dcae", file=path)
    assert caught.value.option == option and caught.value.source == path
    assert str(caught.value).startswith(f"{path}: config '{option}'")


def test_a_file_naming_another_model_is_an_error_not_a_switch(tmp_path):
    path = _yaml(tmp_path, "model: ibq\n")
    with pytest.raises(ConfigError, match="set to ibq there, but dcae was asked for"):
        make_config("dcae", file=path)
    assert make_config(file=path).model == "ibq"  # no model asked for: the file decides
    with pytest.raises(ConfigError, match="set to dcae there"):
        make_config("ibq", base={"model": "dcae"})


def test_every_field_has_help_and_a_flag():
    import argparse

    from dcae_ext.commands import train

    parser = argparse.ArgumentParser()
    sub = train.add_parser(parser.add_subparsers())
    flags = {action.dest: action for action in sub._actions}
    for spec in dataclasses.fields(TrainConfig):
        assert spec.metadata.get("help"), f"TrainConfig.{spec.name} has no help text"
        if spec.name != "model":
            assert spec.name in flags and flags[spec.name].option_strings[0] == "--" + spec.name.replace("_", "-")
            assert spec.metadata["help"] in flags[spec.name].help
            assert "default" in flags[spec.name].help
    args = sub.parse_args(["dcae", "--batch-size", "3", "--betas", "0.1", "0.2", "--no-pin-memory",
                           "--trainable", "a.*", "b.*", "--grad-checkpointing"])
    assert (args.batch_size, args.betas, args.pin_memory, args.trainable) == (3, [0.1, 0.2], False, ["a.*", "b.*"])
    assert args.grad_checkpointing is True and args.lr is None  # unset flags stay None: the recipe decides
    assert set(FIELDS) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_a_config_built_directly_is_coerced_and_checked_too():
    config = TrainConfig(lr="1e-4", steps="3").validate()
    assert config.lr == 1e-4 and config.steps == 3
    with pytest.raises(ConfigError, match="'batch_size'"):
        TrainConfig(batch_size="many").validate()
