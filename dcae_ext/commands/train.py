"""`dcae-ext train dcae|ibq`: train a DC-AE (phase 1, 2 or 3) or an IBQ tokenizer.

  dcae-ext train dcae --preset tiny --steps N --batch-size B --resolution R --out DIR [--data DIR] [--phase 1|2|3]
  dcae-ext train ibq  --preset tiny --steps N --batch-size B --resolution R --out DIR [--data DIR]
  dcae-ext train dcae --out DIR --resume        (continue a run with its saved settings; flags given change them)

Options come from the recipe of the model and phase, then --config FILE (.yaml/.json, the option
names below with underscores), then the flags. A folder that holds a run is refused unless
--resume or --overwrite. Under torchrun every process runs this command; rank 0 alone writes
files and shows progress.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from dcae_ext.train.config import FIELDS, MODELS, RECIPES, SHORT_RUN_RECIPES, ConfigError, defaults, value_type

POSITIONAL = ("model",)


def _default_text(name: str) -> str:
    """The dataclass default, and what each recipe sets instead."""
    spec = FIELDS[name]
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    text = f"default: {_show(default)}"
    recipes = [f"{model}{f' phase {phase}' if model == 'dcae' else ''} {_show(values[name])}"
               for model, phase in RECIPES
               for values in [defaults(model, phase)]
               if name not in ("model", "phase") and name in values and values[name] != default]
    short = [f"{model} {preset} {_show(values[name])}" for (model, preset), values in SHORT_RUN_RECIPES.items()
             if name in values]
    return (text + (f"; recipe: {', '.join(recipes)}" if recipes else "")
            + (f"; phase 1 of a CPU-sized preset: {', '.join(short)}" if short else ""))


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return str(value)


def _numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas or spaces, got {text!r}") from None


class _NumberList(argparse.Action):
    """The numbers of every argument given (each may hold several, separated by commas), as one list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [number for chunk in values for number in chunk])


def add_option(parser: argparse.ArgumentParser, name: str) -> None:
    """A flag for TrainConfig field `name`: type, choices and help from the field."""
    spec = FIELDS[name]
    kind, _ = value_type(name)
    flag = "--" + name.replace("_", "-")
    help_text = spec.metadata.get("help", "")
    if "default" not in help_text:
        help_text += f" ({_default_text(name)})"
    kwargs = dict(dest=name, default=None, help=help_text)
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is tuple and spec.default:  # fixed length (betas)
        count = len(spec.default)
        kwargs.update(type=float, nargs=count, metavar=tuple(f"B{i + 1}" for i in range(count)))
    elif kind is tuple:  # any length (lr_drop_steps, latent_channels_choices): "1,2,3" or "1 2 3"
        kwargs.update(type=_numbers, nargs="*", metavar="N", action=_NumberList)
    elif kind is list:
        kwargs.update(nargs="+", metavar="PATTERN")
    else:
        kwargs["type"] = kind
        if spec.metadata.get("choices") is not None:
            kwargs["choices"] = spec.metadata["choices"]
    parser.add_argument(flag, **kwargs)


def add_parser(subparsers):
    parser = subparsers.add_parser("train", help="train a DC-AE or an IBQ tokenizer",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=MODELS, help="what to train")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint.pt, with its saved settings")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what earlier runs wrote in --out (checkpoint, metrics, images, weights; "
                             "nothing else) and start afresh")
    parser.add_argument("--config", help="YAML or JSON file of the options below (names with underscores), or "
                                         "a named recipe: ibq-paper-16384, ibq-paper-262144 (the official IBQ "
                                         "ImageNet runs)")
    options = parser.add_argument_group("training options (TrainConfig fields)")
    for name in FIELDS:
        if name not in POSITIONAL:
            add_option(options, name)
    return parser


def progress_callback(stream=None):
    """A trainer callback drawing a tqdm bar and writing warnings/checkpoints above it
    (on sys.stderr as it is when the callback is made, unless `stream` is given)."""
    from tqdm import tqdm

    stream = stream or sys.stderr

    state = {"bar": None}

    def callback(event: str, payload: dict) -> None:
        bar = state["bar"]
        if event == "start":
            state["bar"] = tqdm(total=payload["steps"], initial=payload["step"], file=stream, dynamic_ncols=True,
                                desc=f"train ({payload['device']}, {payload['precision']})")
        elif event == "step" and bar is not None:
            bar.update(1)
            shown = {k: f"{payload[k]:.4f}" for k in ("loss", "codebook_usage") if k in payload}
            if payload.get("skipped_steps"):
                shown["skipped"] = payload["skipped_steps"]
            bar.set_postfix(shown, refresh=False)
        elif event in ("warning", "checkpoint", "image"):
            text = payload.get("message") or f"{event}: {payload.get('path')}"
            (bar.write if bar is not None else print)(text, file=stream)
        elif event == "end" and bar is not None:
            bar.close()

    return callback


def _flag_message(error: ConfigError, given: dict) -> str:
    """A ConfigError in the words of the command line: the flag when the value came from one."""
    if error.option in given and error.source is None:
        value, flag = given[error.option], error.option.replace('_', '-')
        if isinstance(value, bool):
            return f"--{'' if value else 'no-'}{flag}: {error.detail}"
        return f"--{flag} {_show(value)}: {error.detail}"
    if error.option in FIELDS and error.source is None:
        return f"option {error.option} (--{error.option.replace('_', '-')}): {error.detail}"
    return str(error)


def make_run_config(args, given: dict):
    """The run's TrainConfig from the flags `given` (and, with --resume, the run's saved settings)."""
    from dcae_ext.train.config import make_config, read_config_file
    from dcae_ext.train.run_folder import CONFIG_NAME, check_out

    if args.model == "ibq" and given.get("phase", 1) != 1:
        raise ConfigError("phase", "applies to dcae only (the IBQ trainer has a single phase)")
    config = make_config(args.model, file=args.config, **given)
    saved = os.path.join(config.out, CONFIG_NAME)
    if args.resume and os.path.isfile(saved):
        base = read_config_file(saved)
        _check_model_kept(base, make_config(args.model, file=args.config, base=base), given, config.out)
        config = make_config(args.model, file=args.config, base=base, **given)
    _check_dependent_flags(config, given)
    check_out(config.out, args.resume, args.overwrite)
    return config


# Options that act only while another is on (the GAN while gan_weight > 0, LPIPS while lpips_weight > 0):
# given as a flag while it is off, they would be ignored without a word.
DEPENDENT_OPTIONS = {
    "gan_weight": ("adaptive_gan_weight", "disc_start", "gan_generator_loss", "disc_first", "disc_lr", "disc_betas",
                   "disc_weight_decay", "disc_channels", "disc_layers", "disc_norm", "lecam_weight"),
    "lpips_weight": ("lpips_net", "lpips_weights"),
}


def _check_dependent_flags(config, given: dict) -> None:
    """A flag that asks for something the run would not do is a ConfigError (flags that turn it off are fine)."""
    for switch, names in DEPENDENT_OPTIONS.items():
        if getattr(config, switch) > 0:
            continue
        for name in names:
            if name in given and given[name] not in (False, 0):
                raise ConfigError(name, f"acts only with {switch.replace('_', ' ')} > 0, and it is 0 in this run; "
                                        f"add --{switch.replace('_', '-')} W or leave out "
                                        f"--{name.replace('_', '-')}")
    if config.gan_weight > 0 and "disc_start" in given and config.disc_start >= config.steps:
        raise ConfigError("disc_start", f"the run ends at step {config.steps}, so the discriminator would never "
                                        "start; use a smaller --disc-start or more --steps")


# What a resumed run cannot change: its checkpoint holds weights (and optimiser state) of this model.
KEPT_ON_RESUME = ("preset", "init_weights", "phase")


def _check_model_kept(saved: dict, resumed, given: dict, out: str) -> None:
    """--resume with a flag that would change the model of the run in `out` is a ConfigError."""
    for name in KEPT_ON_RESUME:
        if name in given and given[name] != getattr(resumed, name):
            raise ConfigError(name, f"the run in {out} trains {name.replace('_', ' ')} "
                                    f"{_show(saved.get(name))}, and a resumed run keeps its model; to change it, "
                                    f"start a new run (e.g. --init-weights {out} --out NEW_DIR)")


def run(args) -> int:
    from dcae_ext.train import distributed
    from dcae_ext.train.trainer import Trainer

    given = {name: getattr(args, name) for name in FIELDS
             if name not in POSITIONAL and getattr(args, name, None) is not None}
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        config = make_run_config(args, given)
        trainer = Trainer(config, callback=progress_callback() if main_rank else None)
    except ConfigError as error:
        flags = dict(given, config=args.config) if args.config else given
        raise ValueError(_flag_message(error, flags)) from None
    metrics = trainer.train(resume=args.resume, overwrite=args.overwrite)
    if main_rank and args.resume and not metrics:
        print(f"nothing to do: the run in {config.out} already finished its {trainer.step} steps; to train it "
              f"longer, resume with more steps (--resume --steps {2 * trainer.step})")
    elif main_rank:
        terms = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("loss") or k == "codebook_usage")
        print(f"step {trainer.step}: {terms}; skipped steps {trainer.skipped_steps}; outputs in {config.out}")
    distributed.teardown(trainer.context)
    return 0
