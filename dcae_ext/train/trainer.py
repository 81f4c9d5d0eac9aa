"""One trainer for DC-AE (phases 1-3) and the IBQ tokenizer; the phase is configuration.

A step: `grad_accum` micro-batches through the generator (reconstruction + LPIPS [+ the model's
own losses] [+ GAN]), clip, skip the update if the loss or gradient norm is not finite (counted),
EMA; then, when the GAN is on, the same micro-batches through the discriminator (hinge [+ LeCAM]).
With `disc_first` (IBQ's official order) the discriminator step comes first, on reconstructions of
a gradient-free generator pass, and the generator's GAN loss then sees the updated discriminator.
Everything a resume needs (weights, EMA, optimisers, schedulers, scaler, RNG, step) goes into an
atomic checkpoint; the data position is the step itself (see data.ResumableSampler).

Quiet by design: progress goes to `callback(event, payload)` (events: start, step, log, image,
checkpoint, warning, end); files go to `config.out`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
import warnings
from collections import defaultdict

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dcae_ext import output_folder
from dcae_ext.interrupt import Interrupted, deferred_signals, ignore_in_worker
from dcae_ext.train import distributed
from dcae_ext.train.build import (apply_trainable, build_model, check_inputs, last_decoder_weight,
                                  set_frozen_modules_to_eval)
from dcae_ext.train.checkpoint import (atomic_save, load_checkpoint, model_config_changes, rng_state, seed_everything,
                                      set_rng_state)
from dcae_ext.train.config import ConfigError, TrainConfig, changed_settings, save_config, to_dict
from dcae_ext.train.data import ResumableSampler, build_dataset
from dcae_ext.train.discriminator import PatchDiscriminator
from dcae_ext.train.ema import EMA
from dcae_ext.train.gan_balance import StepGanWeight
from dcae_ext.models.perceptual import PerceptualLoss
from dcae_ext.train.losses import (GENERATOR_LOSSES, LeCAM, adaptive_gan_weight, at_least_float32,
                                   hinge_discriminator_loss, reconstruction_loss)
from dcae_ext.train.plots import save_loss_curve, save_reconstruction_grid
from dcae_ext.train.run_folder import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, check_out, tidy_out


class TrainingDiverged(ValueError):
    """The loss stayed non-finite for `max_nonfinite_steps` steps in a row; the run stopped."""


class DiscriminatorLoss(nn.Module):
    """Discriminator + LeCAM state in one module, so DDP sees one forward per backward."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.net = PatchDiscriminator(3, config.disc_channels, config.disc_layers, config.disc_norm)
        self.lecam = LeCAM() if config.lecam_weight > 0 else None

    def forward(self, real, fake):
        return self.net(real), self.net(fake)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, schedule: str = "cosine",
              drops: tuple = (), drop_rate: float = 0.1) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total` steps or constant; times
    `drop_rate` for each of the `drops` steps already reached."""
    decay = drop_rate ** sum(1 for drop in drops if step >= int(drop))
    if warmup > 0 and step < warmup:
        return decay * (step + 1) / warmup
    if schedule == "constant":
        return decay
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return decay * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(self, config: TrainConfig, model: nn.Module | None = None, dataset=None, callback=None,
                 context: distributed.DistContext | None = None):
        self.config = config.validate()
        self.callback = callback or (lambda event, payload: None)
        self.context = context or distributed.setup(config.device)
        self.device = self.context.device
        seed_everything(config.seed)  # identical initial weights on every rank
        self.model = (model if model is not None else build_model(config)).to(self.device)
        check_inputs(config, self.model)
        self.trainable_names = apply_trainable(self.model, config.trainable, config.frozen)
        if hasattr(self.model, "set_gradient_checkpointing"):
            self.model.set_gradient_checkpointing(config.grad_checkpointing)
        # The model's own losses (AutoencoderOutput.losses) by name; unnamed ones count with weight 1.
        self.aux_loss_weights = {"quantizer": config.quantizer_weight}
        self._setup_precision()
        self.perceptual = (PerceptualLoss(config.lpips_net, config.lpips_weights).to(self.device)
                           if config.lpips_weight > 0 else None)
        self.discriminator = DiscriminatorLoss(config).to(self.device) if config.gan_weight > 0 else None
        if self.discriminator is not None and config.adaptive_gan_weight:
            if not last_decoder_weight(self.model).requires_grad:
                raise ValueError("config 'adaptive_gan_weight': the decoder's last layer is frozen; "
                                 "use a fixed gan_weight")
        self._wrap_ddp()
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self._setup_optimisers()
        self.dataset = dataset if dataset is not None else self._build_dataset()
        self.sampler = ResumableSampler(self.dataset, self.context.world_size, self.context.rank, config.seed)
        count = min(8, len(self.dataset))
        self.preview = torch.stack([self.dataset[i] for i in range(count)])
        self.step = 0
        self.images_seen = 0            # by all ranks: the data position (see _data_position)
        self.skipped_steps = 0
        self.skipped_disc_steps = 0
        self.nonfinite_streak = 0       # steps in a row skipped for a non-finite loss, up to this one
        self.checkpoint_step = None     # the step of the checkpoint on disk, once one is
        self._step_gan_weight = None    # the adaptive GAN weight of the step in flight, over its micro-batches
        self._lecam_updated = False     # LeCAM's EMAs already hold the step's means (several micro-batches)
        self._step_code_counts = None   # a tokenizer's code histogram of the step in flight (several micro-batches)

    # --- setup ----------------------------------------------------------------------------------

    def _build_dataset(self):
        try:
            return build_dataset(self.config.data, self.config.resolution, self.config.seed,
                                 strict=self.config.strict_data)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError("data", str(error).replace("argument 'data': ", "")) from None

    def _setup_precision(self) -> None:
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _wrap_ddp(self) -> None:
        self.model_ddp, self.discriminator_ddp = self.model, self.discriminator
        if not self.context.distributed:
            return
        cuda = self.device.type == "cuda"
        if cuda and self.config.sync_batchnorm:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            if self.discriminator is not None:
                self.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(self.discriminator)
        ids = [self.device.index] if cuda else None
        self.model_ddp = DistributedDataParallel(self.model, device_ids=ids)
        if self.discriminator is not None:
            self.discriminator_ddp = DistributedDataParallel(self.discriminator, device_ids=ids)

    def _setup_optimisers(self) -> None:
        config = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay)
        factor = lambda step: lr_factor(step, config.warmup_steps, config.steps, config.min_lr_ratio,  # noqa: E731
                                        config.lr_schedule, tuple(config.lr_drop_steps), config.lr_drop_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.disc_optimizer = self.disc_scheduler = None
        if self.discriminator is not None:
            disc_lr = config.lr if config.disc_lr is None else config.disc_lr  # 0 is a valid choice
            self.disc_optimizer = torch.optim.AdamW(
                self.discriminator.net.parameters(), lr=disc_lr, betas=tuple(config.disc_betas),
                weight_decay=config.disc_weight_decay)
            self.disc_scheduler = torch.optim.lr_scheduler.LambdaLR(self.disc_optimizer, factor)

    # --- losses ---------------------------------------------------------------------------------

    def _gan_active(self) -> bool:
        return self.discriminator is not None and self.step >= self.config.disc_start

    def latent_channels_at(self, step: int) -> int | None:
        """Structured-latent training (DC-AE 1.5, docs/training.md): the latent channel count of step
        `step`, drawn uniformly from `latent_channels_choices` by a generator seeded with (seed, step),
        so every rank and a resumed run draw the same; None without choices (all channels)."""
        choices = self.config.latent_channels_choices
        if not choices:
            return None
        # a string seed is hashed whole (sha512), unlike torch's generators, which keep 32 bits of an int
        return choices[random.Random(f"latent_channels:{self.config.seed}:{step}").randrange(len(choices))]

    def _forward(self, images: torch.Tensor):
        """The generator's output for this step's latent channel count."""
        channels = self.latent_channels_at(self.step)
        return self.model_ddp(images) if channels is None else self.model_ddp(images, latent_channels=channels)

    def generator_losses(self, images: torch.Tensor):
        """(total loss, reconstruction, {term: detached value}) for one micro-batch."""
        config = self.config
        terms = {}
        output = self._forward(images)
        reconstruction = output.reconstruction
        pixel = reconstruction_loss(reconstruction, images, config.reconstruction)
        terms[f"loss_{config.reconstruction}"] = pixel.detach()  # every term is logged before its weight
        nll = config.reconstruction_weight * pixel
        if self.perceptual is not None:
            perceptual = at_least_float32(self.perceptual(reconstruction, images))
            terms["loss_lpips"] = perceptual.detach()
            nll = nll + config.lpips_weight * perceptual
        total = nll
        for name, loss in output.losses.items():
            total = total + self.aux_loss_weights.get(name, 1.0) * loss
            terms[f"loss_{name}"] = loss.detach()
        terms.update(output.stats)
        if self._step_code_counts is not None and output.indices is not None:
            counts = torch.bincount(output.indices.detach().reshape(-1), minlength=self._step_code_counts.numel())
            self._step_code_counts += counts
        if self._gan_active():
            self.discriminator.requires_grad_(False)
            generator_gan = GENERATOR_LOSSES[config.gan_generator_loss](self.discriminator.net(reconstruction))
            self.discriminator.requires_grad_(True)
            terms["loss_gan"] = generator_gan.detach()
            if self._step_gan_weight is not None:  # weighted once the step's micro-batches are all in
                self._step_gan_weight.add(nll, generator_gan)
            else:
                weight = (adaptive_gan_weight(nll, generator_gan, last_decoder_weight(self.model), config.gan_weight)
                          if config.adaptive_gan_weight else torch.tensor(config.gan_weight, device=self.device))
                total = total + weight * generator_gan
                terms["gan_weight"] = weight.detach()
        terms["loss"] = total.detach()
        return total, reconstruction, terms

    def discriminator_losses(self, images: torch.Tensor, reconstruction: torch.Tensor):
        logits_real, logits_fake = self.discriminator_ddp(images, reconstruction.detach())
        loss = hinge_discriminator_loss(logits_real, logits_fake)
        terms = {"loss_disc": loss.detach(), "logits_real": at_least_float32(logits_real.detach()).mean(),
                 "logits_fake": at_least_float32(logits_fake.detach()).mean()}
        lecam = self.discriminator.lecam
        if lecam is not None:
            if not self._lecam_updated:  # one micro-batch: its means are the step's
                lecam.update(distributed.all_reduce_mean(terms["logits_real"], self.context),
                             distributed.all_reduce_mean(terms["logits_fake"], self.context))
            regulariser = lecam(logits_real, logits_fake)
            loss = loss + self.config.lecam_weight * regulariser
            terms["loss_lecam"] = regulariser.detach()
        return loss, terms

    # --- one step -------------------------------------------------------------------------------

    def _backward_all(self, module_ddp, micro_batches, loss_fn, optimizer, finish=None):
        """Accumulate gradients over the micro-batches; returns (finite, grad norm, mean terms, outputs).
        `finish(terms)`, if given, completes the gradients and the mean terms before they are unscaled."""
        optimizer.zero_grad(set_to_none=True)
        totals, outputs, finite = defaultdict(float), [], True
        count = len(micro_batches)
        for index, batch in enumerate(micro_batches):
            last = index == count - 1
            no_sync = module_ddp.no_sync() if (self.context.distributed and not last) else contextlib.nullcontext()
            with no_sync:
                with self._autocast():
                    loss, extra, terms = loss_fn(*batch)
                finite = finite and bool(torch.isfinite(loss.detach()))
                self.scaler.scale(loss / count).backward()
            outputs.append(extra)
            for key, value in terms.items():
                totals[key] += float(value) / count
        if finish is not None:
            finish(totals)
        totals = self._mean_over_ranks(totals)
        self.scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        finite = not distributed.any_rank(not (finite and math.isfinite(grad_norm)), self.context)
        return finite, grad_norm, dict(totals), outputs

    def _mean_over_ranks(self, terms: dict) -> dict:
        """The logged terms of the whole batch: each rank's means, averaged over the ranks (every rank
        logs the same keys; one all-reduce)."""
        if not self.context.distributed:
            return terms
        keys = sorted(terms)
        values = torch.tensor([float(terms[key]) for key in keys], dtype=torch.float64, device=self.device)
        return dict(zip(keys, distributed.all_reduce_mean(values, self.context).tolist()))

    def train_step(self, micro_batches: list[torch.Tensor]) -> dict:
        self.model.train()
        set_frozen_modules_to_eval(self.model)
        gan_active = self._gan_active()
        metrics = {}
        if gan_active and self.config.disc_first:
            # The reconstructions of the weights before this step, as the generator pass below makes them
            # (a BatchNorm in the generator, none in the IBQ backbones, would count both passes).
            with torch.no_grad(), self._autocast():
                reconstructions = [self._forward(x).reconstruction for x in micro_batches]
            metrics.update(self._discriminator_step(micro_batches, reconstructions))
        self._step_gan_weight = self._new_step_gan_weight(len(micro_batches)) if gan_active else None
        self._step_code_counts = self._new_code_counts(len(micro_batches))
        try:
            finite, grad_norm, terms, reconstructions = self._backward_all(
                self.model_ddp, [(x,) for x in micro_batches], self._generator_loss_fn, self.optimizer,
                finish=self._add_gan_gradients if self._step_gan_weight is not None else None)
            terms.update(self._step_code_statistics())
        finally:
            self._step_gan_weight = self._step_code_counts = None
        if finite:
            self.scaler.step(self.optimizer)
            if self.ema is not None:
                self.ema.update(self.model)
            self.nonfinite_streak = 0
        else:
            self.skipped_steps += 1
            # fp16's GradScaler skips steps whose gradients overflow by design; a non-finite loss is divergence
            loss_nonfinite = distributed.any_rank(not math.isfinite(terms.get("loss", math.nan)), self.context)
            if loss_nonfinite or self.precision != "fp16":
                self.nonfinite_streak += 1
        metrics.update(terms, grad_norm=grad_norm, lr=self.scheduler.get_last_lr()[0])
        if self.config.latent_channels_choices:
            metrics["latent_channels"] = self.latent_channels_at(self.step)
        if gan_active and not self.config.disc_first:
            metrics.update(self._discriminator_step(micro_batches, reconstructions))
        self.scaler.update()
        with warnings.catch_warnings():  # skipped steps and a late-starting discriminator are intended
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
            if self.disc_scheduler is not None:
                self.disc_scheduler.step()
        self.step += 1
        self.images_seen += sum(len(x) for x in micro_batches) * self.context.world_size
        metrics.update(step=self.step, skipped_steps=self.skipped_steps)
        return metrics

    def _new_step_gan_weight(self, count: int) -> StepGanWeight | None:
        """The adaptive GAN weight of a step of several micro-batches or ranks (one of each computes it
        on its own graph, as VQGAN does)."""
        if not self.config.adaptive_gan_weight or (count == 1 and not self.context.distributed):
            return None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return StepGanWeight(last_decoder_weight(self.model), params, self.config.gan_weight, count, self.scaler,
                             self.context)

    def _new_code_counts(self, count: int) -> torch.Tensor | None:
        """A tokenizer's code histogram over a step of several micro-batches or ranks (None otherwise: the
        model's own statistics are then the step's)."""
        quantizer = getattr(self.model, "quantizer", None)
        if quantizer is None or (count == 1 and not self.context.distributed):
            return None
        return torch.zeros(quantizer.num_codes, dtype=torch.int64, device=self.device)

    def _step_code_statistics(self) -> dict:
        """codebook_usage and perplexity of the step's whole batch (all micro-batches and ranks): the mean
        of per-micro-batch values would understate both (a micro-batch of 4 images uses fewer codes)."""
        if self._step_code_counts is None:
            return {}
        from dcae_ext.models.ibq.quantizer import histogram_statistics

        counts = self._step_code_counts
        if self.context.distributed:
            counts = counts.clone()
            torch.distributed.all_reduce(counts)
        usage, perplexity = histogram_statistics(counts)  # the model's own formula, on the step's histogram
        return {"codebook_usage": float(usage), "perplexity": float(perplexity)}

    def _add_gan_gradients(self, totals: dict) -> None:
        weight = float(self._step_gan_weight.apply())
        totals["gan_weight"] = weight
        totals["loss"] += weight * totals["loss_gan"]

    def _discriminator_step(self, micro_batches, reconstructions) -> dict:
        self.discriminator.train()
        self._lecam_updated = self._update_lecam_once(micro_batches, reconstructions)
        try:
            d_finite, d_norm, d_terms, _ = self._backward_all(
                self.discriminator_ddp, list(zip(micro_batches, reconstructions)), self._disc_loss_fn,
                self.disc_optimizer)
        finally:
            self._lecam_updated = False
        if d_finite:
            self.scaler.step(self.disc_optimizer)
        else:
            self.skipped_disc_steps += 1
        return dict(d_terms, disc_grad_norm=d_norm)

    @torch.no_grad()
    def _update_lecam_once(self, micro_batches, reconstructions) -> bool:
        """LeCAM's EMAs follow the mean logits of the step's whole batch, once a step, before its regulariser
        (as the official code updates them with each batch): with several micro-batches, a gradient-free
        discriminator pass gives their means first (the discriminator's BatchNorm statistics are put back,
        so that only the loss pass moves them). False when there is nothing to do ahead of the loss pass."""
        lecam = self.discriminator.lecam
        if lecam is None or len(micro_batches) == 1:
            return False
        net = self.discriminator.net
        buffers = {name: buffer.clone() for name, buffer in net.named_buffers()}
        real = fake = 0.0
        with self._autocast():
            for images, reconstruction in zip(micro_batches, reconstructions):
                real = real + at_least_float32(net(images)).mean() / len(micro_batches)
                fake = fake + at_least_float32(net(reconstruction)).mean() / len(micro_batches)
        for name, buffer in net.named_buffers():
            buffer.copy_(buffers[name])
        lecam.update(distributed.all_reduce_mean(real, self.context), distributed.all_reduce_mean(fake, self.context))
        return True

    def _generator_loss_fn(self, images):
        total, reconstruction, terms = self.generator_losses(images)
        return total, reconstruction.detach(), terms

    def _disc_loss_fn(self, images, reconstruction):
        loss, terms = self.discriminator_losses(images, reconstruction)
        return loss, None, terms

    # --- state ----------------------------------------------------------------------------------

    def _data_position(self) -> tuple[int, int]:
        """(epoch, samples of it this rank has consumed), from the images all ranks consumed so far: a
        resume with another batch size, accumulation or process count goes on after the last image seen."""
        return divmod(self.images_seen // self.context.world_size, self.sampler.num_samples)

    def state_dict(self) -> dict:
        state = {"config": to_dict(self.config), "step": self.step, "skipped_steps": self.skipped_steps,
                 "skipped_disc_steps": self.skipped_disc_steps, "nonfinite_streak": self.nonfinite_streak,
                 "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rng_state(), "data_position": self._data_position(),
                 "images_seen": self.images_seen,
                 "world_size": self.context.world_size, "model_class": type(self.model).__name__,
                 "model_config": self.model.config.to_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.discriminator is not None:
            state.update(discriminator=self.discriminator.state_dict(),
                         disc_optimizer=self.disc_optimizer.state_dict(),
                         disc_scheduler=self.disc_scheduler.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
            self.disc_scheduler.load_state_dict(state["disc_scheduler"])
        elif self.discriminator is not None:  # the GAN is new in the resumed run: its schedule is at the run's step
            self.disc_scheduler.last_epoch = state["step"]
        self._apply_optimiser_settings()
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        saved = state["config"]  # checkpoints written before images_seen: the saved run's own step size
        self.images_seen = state.get("images_seen", self.step * saved["grad_accum"] * saved["batch_size"]
                                     * state.get("world_size", 1))
        self.skipped_disc_steps = state.get("skipped_disc_steps", 0)
        self.nonfinite_streak = state.get("nonfinite_streak", 0)
        self.checkpoint_step = self.step
        set_rng_state(state["rng"])

    def _apply_optimiser_settings(self) -> None:
        """The optimisers' and the EMA's settings of this run's config over those a loaded checkpoint
        restored (its lr, betas and weight decay), so that a setting a resume changes takes effect; the
        same values (a plain resume) leave everything as loaded, the current lr included."""
        config = self.config
        pairs = [(self.optimizer, self.scheduler, config.lr, config.betas, config.weight_decay)]
        if self.discriminator is not None:
            disc_lr = config.lr if config.disc_lr is None else config.disc_lr
            pairs.append((self.disc_optimizer, self.disc_scheduler, disc_lr, config.disc_betas,
                          config.disc_weight_decay))
        for optimizer, scheduler, lr, betas, weight_decay in pairs:
            scheduler.base_lrs = [lr for _ in optimizer.param_groups]
            for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
                group.update(initial_lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                             lr=lr * factor(scheduler.last_epoch))
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        if self.ema is not None:
            self.ema.decay = config.ema_decay

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.config.out, CHECKPOINT_NAME)

    def save_checkpoint(self) -> str | None:
        if self.context.is_main:
            atomic_save(self.state_dict(), self.checkpoint_path)
            self.callback("checkpoint", {"path": self.checkpoint_path, "step": self.step})
        distributed.barrier(self.context)
        self.checkpoint_step = self.step
        return self.checkpoint_path

    def resume(self, path: str | None = None) -> bool:
        """Load `path` (default: the run's checkpoint). False when there is none to resume."""
        path = path or self.checkpoint_path
        if not os.path.isfile(path):
            self.callback("warning", {"message": f"--resume: no checkpoint at {path}; starting from step 0"})
            return False
        state = load_checkpoint(path, map_location=self.device)
        model_changes = model_config_changes(state, self.model)
        if model_changes:  # same names and shapes (loss settings, activations): the weights would load
            raise ValueError(f"resume: {path} was trained by another model than the one built now "
                             f"({'; '.join(model_changes[:4])}{'; ...' if len(model_changes) > 4 else ''}); resume "
                             "with the model that trained, or start a new run from its weights (--init-weights)")
        changed = changed_settings(state["config"], to_dict(self.config))
        if changed:
            self.callback("warning", {"message": f"resuming {path} with changed settings: {'; '.join(changed)}"})
        saved = state["config"]
        if state.get("world_size", 1) * saved["batch_size"] * saved["grad_accum"] != \
                self.context.world_size * self.config.batch_size * self.config.grad_accum:
            self.callback("warning", {"message": "resuming with a different global batch size: the run goes on "
                                                 "after the last image it saw, in other batches than an "
                                                 "uninterrupted run's"})
        self.load_state_dict(state)
        return True

    # --- the loop -------------------------------------------------------------------------------

    def _loader(self):
        epoch, skip = self._data_position()
        self.sampler.start(epoch, skip)
        config = self.config
        return iter(DataLoader(self.dataset, batch_size=config.batch_size, sampler=self.sampler,
                               num_workers=config.num_workers, drop_last=True,
                               pin_memory=config.pin_memory and self.device.type == "cuda",
                               persistent_workers=False, worker_init_fn=ignore_in_worker))

    def _write_metrics(self, row: dict) -> None:
        if self.context.is_main:
            with open(os.path.join(self.config.out, METRICS_NAME), "a") as stream:
                stream.write(json.dumps(row) + "\n")

    def _prepare_out(self, resume: bool, overwrite: bool) -> None:
        """Refuse to mix a new run into an earlier one; clear it (overwrite) or tidy it for a resume."""
        check_out(self.config.out, resume, overwrite, flags=False)
        if resume:
            self.resume()
        if self.context.is_main:
            for note in tidy_out(self.config.out, overwrite, self.step if resume else None):
                self.callback("warning", {"message": note})

    @torch.no_grad()
    def save_preview(self, name: str | None = None) -> str | None:
        if not self.context.is_main:
            return None
        self.model.eval()
        images = self.preview.to(self.device)
        with self._autocast():
            reconstruction = self.model(images).reconstruction
        path = os.path.join(self.config.out, "images", name or f"reconstruction_{self.step:07d}.png")
        save_reconstruction_grid(images, reconstruction, path, step=self.step)
        self.callback("image", {"path": path, "step": self.step})
        return path

    def train(self, resume: bool = False, until: int | None = None, overwrite: bool = False) -> dict:
        """Run to `config.steps` (or stop early at step `until`, checkpointing there, as a killed
        run would have). A folder holding a run is refused unless `resume` (continue it from its
        checkpoint) or `overwrite` (delete what runs wrote there first); one process at a time
        writes into it (`dcae_ext.output_folder`). Returns the last logged metrics ({} when a
        resumed run had already finished: nothing to do)."""
        lock = self._lock_out()
        try:
            return self._train(resume, until, overwrite)
        finally:
            output_folder.release(self.config.out, lock)

    def _lock_out(self) -> int | None:
        """The main rank locks the output folder; every rank raises if it could not."""
        lock, error = None, None
        if self.context.is_main:
            try:
                lock = output_folder.acquire(self.config.out)
            except output_folder.FolderInUseError as failure:
                error = failure
        if distributed.any_rank(error is not None, self.context):
            raise error or output_folder.FolderInUseError(f"{self.config.out} is in use by another process")
        return lock

    def _final_outputs_written(self) -> bool:
        last = "model_ema" if self.ema is not None else "model"  # finish() writes it last
        return os.path.isdir(os.path.join(self.config.out, last))

    def _train(self, resume: bool, until: int | None, overwrite: bool) -> dict:
        config = self.config
        self._prepare_out(resume, overwrite)
        if resume and self.step >= config.steps:
            if self.context.is_main and not self._final_outputs_written():
                self.finish()  # the run was stopped while it exported its final outputs
            return {}
        os.makedirs(config.out, exist_ok=True)
        config_path = os.path.join(config.out, CONFIG_NAME)
        if self.context.is_main:
            save_config(config, config_path)
        try:
            return self._run(until)
        except BaseException:
            if self.step == 0 and self.context.is_main and os.path.isfile(config_path):
                os.unlink(config_path)  # a run that never took a step leaves nothing behind
            raise

    def _run(self, until: int | None) -> dict:
        config = self.config
        stop = min(config.steps, until) if until is not None else config.steps
        self.callback("start", {"step": self.step, "steps": config.steps, "trainable": len(self.trainable_names),
                                "device": str(self.device), "precision": self.precision})
        batches, metrics = self._loader(), {}
        images_per_step = config.batch_size * config.grad_accum * self.context.world_size
        tick, tick_step = time.perf_counter(), self.step
        checkpoint_due = False
        try:
            # SIGINT/SIGTERM: the step in flight finishes, then a checkpoint of it is saved (_interrupted)
            with deferred_signals() as signals:
                while self.step < stop:
                    if distributed.any_rank(signals.received is not None, self.context):
                        self._interrupted(signals.received)
                    micro = [next(batches).to(self.device, non_blocking=True) for _ in range(config.grad_accum)]
                    metrics = self.train_step(micro)
                    self.callback("step", metrics)
                    last = self.step == stop
                    if self.step % config.log_every == 0 or last or self.step == 1:
                        now = time.perf_counter()
                        metrics["images_per_s"] = images_per_step * (self.step - tick_step) / max(now - tick, 1e-9)
                        tick, tick_step = now, self.step
                        self._write_metrics(metrics)
                        self.callback("log", metrics)
                    if config.max_nonfinite_steps and self.nonfinite_streak >= config.max_nonfinite_steps:
                        self._diverged()
                    if config.image_every and self.step % config.image_every == 0 and not last:
                        self.save_preview()
                    # a checkpoint of weights whose loss is not finite would only resume into the same NaN:
                    # wait for a finite step (the weights of a skipped step are those of the last finite one)
                    checkpoint_due = checkpoint_due or bool(
                        config.checkpoint_every and self.step % config.checkpoint_every == 0)
                    if (checkpoint_due and self.nonfinite_streak == 0) or last:
                        self.save_checkpoint()
                        checkpoint_due = False
                if self.step >= config.steps:
                    self.finish()
        finally:
            # Stop the loader's workers now: left to the garbage collector, the iterator can be
            # finalised inside a later loader's forked worker, which then fails on it.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self.callback("end", {"step": self.step, "skipped_steps": self.skipped_steps})
        return metrics

    def _interrupted(self, signum: int) -> None:
        """Save the current step (unless none was taken) and raise Interrupted saying how to go on."""
        if self.step > 0 and self.checkpoint_step != self.step:
            self.save_checkpoint()
        self.callback("end", {"step": self.step, "skipped_steps": self.skipped_steps})
        if self.step == 0:
            raise Interrupted(signum, "interrupted before the first step; nothing was saved")
        raise Interrupted(signum, f"interrupted at step {self.step}; resume with --resume")

    def _diverged(self) -> None:
        streak, config = self.nonfinite_streak, self.config
        kept = (f"the checkpoint of step {self.checkpoint_step} is kept" if self.checkpoint_step is not None
                else "no checkpoint was written")
        self.callback("end", {"step": self.step, "skipped_steps": self.skipped_steps})
        raise TrainingDiverged(
            f"the loss was not finite for {streak} steps in a row (steps {self.step - streak + 1}-{self.step}): "
            f"training diverged and stopped; lower the learning rate (lr {config.lr:g}); {kept}")

    def finish(self) -> None:
        """Final grid, loss curve and exported weights (live and EMA) under `config.out`."""
        if not self.context.is_main:
            return
        self.save_preview(f"reconstruction_{self.step:07d}.png")
        save_loss_curve(os.path.join(self.config.out, "metrics.jsonl"),
                        os.path.join(self.config.out, "loss_curve.png"),
                        title=f"{self.config.model} phase {self.config.phase} "
                              f"({self.config.preset or self.config.init_weights})")
        self.model.save_pretrained(os.path.join(self.config.out, "model"))
        if self.ema is not None:
            self.ema.model.save_pretrained(os.path.join(self.config.out, "model_ema"))
