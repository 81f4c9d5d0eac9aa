"""The run's PNGs say what they show: every loss term (negative ones on their own axis), visible
single points, legends beside the axes; reconstruction strips with row labels, step and PSNR."""
import json

import pytest
import torch

from dcae_ext.train.plots import (loss_curve_figure, read_metrics, reconstruction_figure, save_loss_curve,
                                  save_reconstruction_grid)

ROWS = [{"step": 1, "loss": 2.0, "loss_l1": 0.5, "loss_entropy": -1.5},
        {"step": 2, "loss": 1.5, "loss_l1": 0.4, "loss_entropy": -1.2, "loss_gan": 0.3},
        {"step": 3, "loss": 1.2, "loss_l1": 0.3, "loss_entropy": -0.9, "loss_gan": -0.1, "loss_disc": 0.9}]


def _lines(axis):
    return {line.get_label(): line for line in axis.get_lines() if not line.get_label().startswith("_")}


def test_loss_curve_plots_every_term_negative_ones_on_a_linear_axis():
    figure = loss_curve_figure(ROWS, "run")
    top, bottom = figure.axes
    assert top.get_yscale() == "log" and bottom.get_yscale() == "linear"
    assert set(_lines(top)) == {"loss", "loss_l1", "loss_disc"}
    assert set(_lines(bottom)) == {"loss_entropy", "loss_gan"}
    assert list(_lines(bottom)["loss_entropy"].get_ydata()) == [-1.5, -1.2, -0.9]
    single = _lines(top)["loss_disc"]  # one point: drawn as a marker, not an invisible line
    assert len(single.get_xdata()) == 1 and single.get_marker() == "o" and single.get_markersize() > 0
    figure.canvas.draw()
    for axis in (top, bottom):  # legends sit right of their axes, covering no line
        assert axis.get_legend().get_window_extent().x0 >= axis.get_window_extent().x1


def test_loss_curve_reads_a_torn_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS) + '{"step": 4, "lo')
    assert [row["step"] for row in read_metrics(str(path))] == [1, 2, 3]
    assert save_loss_curve(str(path), str(tmp_path / "loss_curve.png"))
    assert (tmp_path / "loss_curve.png").stat().st_size > 10_000


def test_reconstruction_strip_labels_rows_step_and_psnr_per_image(tmp_path):
    torch.manual_seed(0)
    originals = torch.rand(3, 3, 16, 16) * 2 - 1
    noise = torch.tensor([0.0, 0.1, 0.2]).view(3, 1, 1, 1) * torch.randn(3, 3, 16, 16)
    reconstructions = (originals + noise).clamp(-1, 1)
    figure = reconstruction_figure(originals, reconstructions, step=7)
    axes = figure.axes
    assert axes[0].get_ylabel() == "input" and axes[3].get_ylabel() == "reconstruction"
    assert figure._suptitle.get_text().startswith("step 7: inputs (top) and reconstructions (bottom)")
    labels = [axis.get_xlabel() for axis in axes[3:]]
    assert labels[0] == "PSNR inf dB"
    for label, image in zip(labels[1:], range(1, 3)):
        mse = (((reconstructions[image] + 1) / 2 - (originals[image] + 1) / 2) ** 2).mean()
        assert float(label.split()[1]) == pytest.approx(float(10 * torch.log10(1 / mse)), abs=0.05)
    save_reconstruction_grid(originals, reconstructions, str(tmp_path / "strip.png"), step=7)
    assert (tmp_path / "strip.png").stat().st_size > 5_000


def test_png_writers_leave_the_users_matplotlib_backend_alone(tmp_path, fake_records_for_plots):
    """train, eval and bench draw on their own Agg canvas: a user's backend stays selected."""
    import matplotlib

    from dcae_ext.bench.plots import write_plots
    from dcae_ext.eval.images import save_worst_best_grid

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        originals = torch.rand(2, 3, 16, 16) * 2 - 1
        save_reconstruction_grid(originals, originals.flip(0), str(tmp_path / "strip.png"))
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
        assert save_loss_curve(str(tmp_path / "metrics.jsonl"), str(tmp_path / "loss.png"))
        entry = {"name": "a", "psnr": 20.0, "ssim": 0.5, "original": torch.rand(3, 16, 16),
                 "reconstruction": torch.rand(3, 16, 16)}
        save_worst_best_grid(str(tmp_path / "grid.png"), [entry], [entry])
        assert write_plots(fake_records_for_plots, str(tmp_path / "bench"), "cpu")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    for name in ("strip.png", "loss.png", "grid.png", "bench/cpu_speedup.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def fake_records_for_plots():
    return [{"op": "pixel_unshuffle_mean", "impl": impl, "device": "cpu", "device_name": "x86_64",
             "dtype": "float32", "shape": {"stage": "down0"}, "fwd_ms": ms, "fwdbwd_ms": 2 * ms, "peak_mem_mb": 1.0,
             "oom": False, "torch": "2.14.1", "cuda": None, "date": "2026-11-29T09:00:00+00:00"}
            for impl, ms in (("fast", 1.0), ("reference", 2.0))]
