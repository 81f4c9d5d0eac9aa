"""The experiments behind docs/ibq_training.md (not a test: run it by hand, one thread each).

    python tests/ibq/collapse_experiments.py diagnose OUT [--codebook-std S] [--codebook-lr-scale M] [key=value ...]
        the demo's tiny IBQ run (dcae_ext.train.demo), diagnostics every 10 steps in OUT/diagnostics.jsonl:
        norms, logit gap / T, softmax peaks, each loss term's gradient at z, the codes and the encoder,
        and how far one step moved used and unused codes; key=value override TrainConfig fields
    python tests/ibq/collapse_experiments.py official OUT [--codebook-std S] [key=value ...]
        the same run with SEED-Voken's formulation (seed_voken_ibq.py) around the same encoder/decoder
    python tests/ibq/collapse_experiments.py evaluate MODEL_DIR
        usage, perplexity and PSNR over the embedded images at 64 and 256 px, as `dcae-ext eval` counts them
    python tests/ibq/collapse_experiments.py plot OUT.png BEFORE/diagnostics.jsonl AFTER/diagnostics.jsonl
        docs/images/ibq_collapse.png
"""
import argparse
import ast
import dataclasses
import json
import math
import os
import sys
import time
import warnings

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_voken_ibq as official  # noqa: E402
from dcae_ext.eval.evaluate import evaluate as evaluate_loader  # noqa: E402
from dcae_ext.eval.images import EvalImages  # noqa: E402
from dcae_ext.models import IBQTokenizer  # noqa: E402
from dcae_ext.models.output import AutoencoderOutput  # noqa: E402
from dcae_ext.models.perceptual import PerceptualLoss  # noqa: E402
from dcae_ext.models.ibq.quantizer import code_statistics  # noqa: E402
from dcae_ext.models.ibq.tokenizer import get_ibq_config  # noqa: E402
from dcae_ext.train.config import make_config, to_dict  # noqa: E402
from dcae_ext.train.data import ResumableSampler, build_dataset, embedded_image_paths  # noqa: E402
from dcae_ext.train.demo import demo_configs  # noqa: E402
from dcae_ext.train.discriminator import PatchDiscriminator  # noqa: E402
from dcae_ext.train.trainer import Trainer, lr_factor  # noqa: E402

EVERY = 10


def demo_ibq(out: str, codebook_std: float, overrides: dict):
    config = to_dict(demo_configs(out)[1])
    config.update(overrides, out=out)
    config = make_config(**config)
    torch.manual_seed(config.seed)
    model = IBQTokenizer(dataclasses.replace(get_ibq_config("tiny"), codebook_init_std=codebook_std))
    return config, model


def _grad_norms(loss, tensors):
    grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


class DiagnosedTrainer(Trainer):
    def diagnostics(self, x: torch.Tensor) -> dict:
        model, quantizer = self.model, self.model.quantizer
        codebook = quantizer.codebook
        z = model.quant_conv(model.encoder(x))
        q = quantizer(z)
        reconstruction = model.decode_codes(q.quantized)
        weighted_entropy = quantizer.entropy_weight * q.entropy_loss
        terms = {"l1": (reconstruction - x).abs().mean(),
                 "lpips": self.config.lpips_weight * self.perceptual(reconstruction, x),
                 "straight_through": q.loss - q.commitment_loss - q.codebook_loss - weighted_entropy,
                 "commitment": q.commitment_loss, "codebook": q.codebook_loss, "entropy": weighted_entropy}
        rows = z.detach().movedim(1, -1).reshape(-1, codebook.shape[1])
        logits = rows @ codebook.detach().t()
        top2 = logits.topk(2, dim=-1).values
        indices = logits.argmax(-1)
        used = torch.zeros(codebook.shape[0], dtype=torch.bool)
        used[indices] = True
        temperature = quantizer.entropy_temperature
        row = {"step": self.step, "codes_used": int(used.sum()), "z_norm": rows.norm(dim=-1).mean().item(),
               "code_norm": codebook.detach().norm(dim=-1).mean().item(),
               "used_code_norm": codebook.detach()[used].norm(dim=-1).mean().item(),
               "gap_over_T": ((top2[:, 0] - top2[:, 1]).median() / temperature).item(),
               "max_p_at_T": (logits / temperature).softmax(-1).max(-1).values.mean().item(),
               "max_p_at_1": logits.softmax(-1).max(-1).values.mean().item(),
               "z_to_code": (rows - codebook.detach()[indices]).norm(dim=-1).mean().item()}
        encoder = list(model.encoder.parameters()) + list(model.quant_conv.parameters())
        for name, term in terms.items():
            grad_z, grad_codes, *grad_encoder = _grad_norms(term, [z, codebook] + encoder)
            row[f"grad_z_{name}"] = grad_z.norm().item()
            row[f"grad_used_codes_{name}"] = grad_codes[used].norm().item()
            row[f"grad_unused_codes_{name}"] = grad_codes[~used].norm().item()
            row[f"grad_encoder_{name}"] = math.sqrt(sum(float(g.pow(2).sum()) for g in grad_encoder))
        self._before, self._used = codebook.detach().clone(), used
        return row

    def train_step(self, micro_batches):
        row = None
        if self.step % EVERY == 0:
            self.model.train()
            row = self.diagnostics(micro_batches[0])
        metrics = super().train_step(micro_batches)
        if row is not None:
            moved = (self.model.quantizer.codebook.detach() - self._before).norm(dim=-1)
            row.update(step_of_used_codes=moved[self._used].mean().item(),
                       step_of_unused_codes=moved[~self._used].mean().item() if (~self._used).any() else 0.0,
                       batch_usage=float(metrics["codebook_usage"]), lr=metrics["lr"])
            with open(os.path.join(self.config.out, "diagnostics.jsonl"), "a") as stream:
                stream.write(json.dumps(row) + "\n")
        return metrics


def scale_codebook_lr(trainer: Trainer, factor: float) -> None:
    """Move the codebook to its own optimiser group with `factor` times the lr."""
    codebook = trainer.model.quantizer.codebook
    group = trainer.optimizer.param_groups[0]
    group["params"] = [p for p in group["params"] if p is not codebook]
    trainer.optimizer.add_param_group({"params": [codebook], "lr": group["lr"] * factor})
    trainer.scheduler.base_lrs.append(trainer.scheduler.base_lrs[0] * factor)
    trainer.scheduler.lr_lambdas.append(trainer.scheduler.lr_lambdas[0])


def evaluate(model, num_codes: int, resolution: int) -> dict:
    """Usage and perplexity over all codes of the embedded images, mean PSNR: `dcae-ext eval`'s numbers."""
    loader = DataLoader(EvalImages(embedded_image_paths(), resolution), batch_size=4)
    metrics = evaluate_loader(model, loader, num_codes=num_codes, keep=0)["metrics"]
    codes = metrics["codebook"]
    return {"usage": codes["usage"], "perplexity": codes["perplexity"], "psnr": metrics["psnr"]}


class OfficialAsTokenizer(torch.nn.Module):
    """The official model behind the interface `evaluate` expects."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        quant, _, (_, _, indices) = self.model.encode(x)
        return AutoencoderOutput(self.model.decode(quant), indices=indices.reshape(x.shape[0], *quant.shape[2:]))


def run_official(out: str, codebook_std: float, overrides: dict) -> dict:
    """The demo's run (same encoder/decoder and initial weights, data order, lr schedule, GAN start)
    with the official quantizer, losses and discriminator-then-generator step."""
    config, ours = demo_ibq(out, codebook_std, overrides)
    model = official.IBQ(dict(ch=32, out_ch=3, ch_mult=[1], num_res_blocks=1, attn_resolutions=[], in_channels=3,
                              resolution=config.resolution, z_channels=32), n_embed=512, embed_dim=16)
    model.encoder, model.decoder = ours.encoder, ours.decoder
    model.quant_conv, model.post_quant_conv = ours.quant_conv, ours.post_quant_conv
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(ours.quantizer.codebook)
    model.get_last_layer = lambda: None  # only the adaptive GAN weight reads it (off: a fixed weight 0.1)
    discriminator = PatchDiscriminator(3, config.disc_channels, config.disc_layers)
    loss = official.VQLPIPSWithDiscriminator(PerceptualLoss(config.lpips_net), discriminator,
                                             disc_start=config.disc_start)
    opt_gen, opt_disc = official.optimizers(model, loss, lr=config.lr)
    factor = lambda step: lr_factor(step, config.warmup_steps, config.steps, config.min_lr_ratio,  # noqa: E731
                                    config.lr_schedule)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (opt_gen, opt_disc)]
    dataset = build_dataset(None, config.resolution, config.seed)
    sampler = ResumableSampler(dataset, 1, 0, config.seed)
    sampler.start(0, 0)
    batches = iter(DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "official.jsonl"), "w") as log:
        for step in range(config.steps):
            x = next(batches)
            model.train()
            official.training_step(model, loss, opt_gen, opt_disc, x, step)
            for scheduler in schedulers:
                scheduler.step()
            if step % EVERY == 0:
                with torch.no_grad():
                    indices = model.encode(x)[2][2]
                usage, perplexity = code_statistics(indices, 512)
                log.write(json.dumps({"step": step + 1, "batch_usage": float(usage),
                                      "batch_perplexity": float(perplexity)}) + "\n")
    return {resolution: evaluate(OfficialAsTokenizer(model.eval()), 512, resolution) for resolution in (64, 256)}


def plot(path: str, before: str, after: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("codes used in a batch (of 512)", "linear", lambda r: r["codes_used"]),
              ("median (top1 - top2 logit) / T", "log", lambda r: r["gap_over_T"]),
              ("entropy-term gradient on unselected codes", "log", lambda r: r["grad_unused_codes_entropy"] + 1e-16),
              ("encoder gradient: quantizer / reconstruction", "log",
               lambda r: (r["grad_encoder_straight_through"] + r["grad_encoder_commitment"])
               / (r["grad_encoder_l1"] + r["grad_encoder_lpips"]))]
    figure, axes = plt.subplots(1, len(panels), figsize=(17, 3.6))
    for label, file in (("codebook N(0, 1) (before)", before), ("codebook N(0, 0.1^2) (tiny preset now)", after)):
        with open(file) as stream:
            rows = [json.loads(line) for line in stream]
        for axis, (_, _, value) in zip(axes, panels):
            axis.plot([r["step"] for r in rows], [value(r) for r in rows], label=label)
    for axis, (title, scale, _) in zip(axes, panels):
        axis.set_title(title)
        axis.set_yscale(scale)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.02))
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["diagnose", "official", "evaluate", "plot"])
    parser.add_argument("path")
    parser.add_argument("--codebook-std", type=float, default=get_ibq_config("tiny").codebook_init_std)
    parser.add_argument("--codebook-lr-scale", type=float, default=1.0)
    parser.add_argument("overrides", nargs="*", help="TrainConfig key=value (Python literals)")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="LPIPS: no trunk weights")
    started = time.perf_counter()
    if args.command == "plot":
        return plot(args.path, *args.overrides)
    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.overrides)}
    if args.command == "evaluate":
        model = IBQTokenizer.from_pretrained(args.path)
        result = {resolution: evaluate(model, model.config.num_codes, resolution) for resolution in (64, 256)}
    elif args.command == "official":
        result = run_official(args.path, args.codebook_std, overrides)
    else:
        config, model = demo_ibq(args.path, args.codebook_std, overrides)
        os.makedirs(args.path, exist_ok=True)
        open(os.path.join(args.path, "diagnostics.jsonl"), "w").close()
        trainer = DiagnosedTrainer(config, model=model)
        if args.codebook_lr_scale != 1.0:
            scale_codebook_lr(trainer, args.codebook_lr_scale)
        trainer.train()
        result = {resolution: evaluate(model.eval(), 512, resolution) for resolution in (64, 256)}
    print(json.dumps({"seconds": round(time.perf_counter() - started), **result}))


if __name__ == "__main__":
    main()
