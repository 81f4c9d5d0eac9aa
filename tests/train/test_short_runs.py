"""Short runs behave as the README shows: the CPU-sized presets carry the settings that work at their
scale (one source, which `dcae-ext demo` uses too), and the EMA warms up, so a short run's
model_ema/ holds trained weights, not the initial ones."""
import pytest
import torch

from dcae_ext.train.config import SHORT_RUN_RECIPES, make_config
from dcae_ext.train.demo import demo_configs
from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


def test_the_tiny_presets_carry_the_short_run_settings():
    for config in (make_config("dcae", preset="tiny"), make_config("dcae")):  # tiny is the default preset
        assert (config.preset, config.lr, config.weight_decay, config.warmup_steps, config.lpips_net) == \
            ("tiny", 2e-3, 0.0, 20, "alex")
    ibq = make_config("ibq", preset="tiny")
    assert (ibq.lr, ibq.lr_schedule, ibq.warmup_steps, ibq.disc_channels) == (1e-3, "cosine", 20, 32)
    paper = make_config("dcae", preset="dc-ae-f32c32-in-1.0")
    assert (paper.lr, paper.weight_decay, paper.warmup_steps) == (6.4e-5, 0.1, 0)
    assert make_config("dcae", preset="tiny", phase=2).lr == 6.4e-5  # measured for phase 1 only
    assert make_config("dcae", preset="tiny", lr=1e-4, warmup_steps=0).lr == 1e-4  # flags still win


def test_the_demo_trains_with_the_presets_own_settings(tmp_path):
    dcae, ibq = demo_configs(str(tmp_path))
    for config in (dcae, ibq):
        recipe = SHORT_RUN_RECIPES[(config.model, "tiny")]
        assert {name: getattr(config, name) for name in recipe} == recipe


def test_a_short_runs_ema_holds_trained_weights(micro_dcae, quick_config):
    model = micro_dcae()
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = Trainer(quick_config(steps=10, lr=1e-2, ema_decay=0.999), model=model, dataset=SmoothImages())
    trainer.train()
    live, ema = trainer.model.state_dict(), trainer.ema.model.state_dict()
    names = [name for name, value in initial.items() if value.is_floating_point() and value.numel() > 1]

    def distance(a, b):
        return sum(float((a[name] - b[name]).float().norm()) for name in names)

    moved = distance(live, initial)
    assert moved > 0
    # a fixed 0.999 would leave the EMA 99 % of the way at the start; the warm-up puts it near the live weights
    assert distance(ema, live) < 0.25 * moved, (distance(ema, live), moved)
    assert trainer.ema.updates == 10 and trainer.ema.current_decay() == pytest.approx(12 / 21)
