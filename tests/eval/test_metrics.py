"""Metrics against independent implementations (scikit-image) and on constructed inputs."""
import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from dcae_ext.data.psnr import psnr_per_image
from dcae_ext.eval.metrics import CodebookUsage, MetricUnavailable, build_fid, load_lpips, ssim_per_image


def _known_pair():
    """Two crops of scikit-image's photographs and distorted copies (noise, blur-like shift), in [0, 1]."""
    rng = np.random.default_rng(0)
    originals = [skdata.astronaut()[100:164, 150:214], skdata.chelsea()[50:114, 100:164]]
    targets, distorted = [], []
    for image, noise in zip(originals, (0.05, 0.2)):
        image = image.astype(np.float64) / 255
        targets.append(image)
        distorted.append(np.clip(image + rng.normal(0, noise, image.shape), 0, 1))
    return targets, distorted


def _to_batch(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()


def test_psnr_matches_scikit_image():
    targets, distorted = _known_pair()
    ours = psnr_per_image(_to_batch(distorted), _to_batch(targets))
    expected = [sk_psnr(t.astype(np.float32), d.astype(np.float32), data_range=1.0) for t, d in zip(targets, distorted)]
    assert ours.shape == (2,)
    torch.testing.assert_close(ours.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-3)
    assert ours[0] > ours[1]  # less noise, higher PSNR


def test_ssim_matches_scikit_image():
    targets, distorted = _known_pair()
    ours = ssim_per_image(_to_batch(distorted), _to_batch(targets))
    expected = [sk_ssim(t, d, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                        use_sample_covariance=False) for t, d in zip(targets, distorted)]
    torch.testing.assert_close(ours.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=5e-3)
    assert torch.allclose(ssim_per_image(_to_batch(targets), _to_batch(targets)), torch.ones(2), atol=1e-5)


def test_pair_shape_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="reconstruction"):
        psnr_per_image(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def _image_set(count=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, 1, 1, generator=generator)
    texture = torch.rand(count, 3, 16, 16, generator=generator)
    return (0.6 * base + 0.4 * texture).clamp(0, 1)


def _fid(real, fake, features):
    metric = build_fid(feature_extractor=features)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift(small_features):
    images = _image_set()
    assert abs(_fid(images, images, small_features)) < 1e-4
    small = _fid(images, (images + 0.05).clamp(0, 1), small_features)
    large = _fid(images, (images + 0.3).clamp(0, 1), small_features)
    assert small > 1e-3
    assert large > small


def test_fid_without_inception_weights_is_unavailable_not_a_number(monkeypatch):
    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MetricUnavailable, match="--inception-weights"):
        build_fid(None)
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        build_fid("/nonexistent/inception.pth")


def test_fid_reads_inception_weights_from_a_local_file(tmp_path, monkeypatch):
    """The Inception route loads the given file and never the network: a file of (random) weights
    in torch-fidelity's layout loads strictly, and a set against itself scores ~0."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    # Build the network once with its weights left random, to write a weights file of its layout.
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict",
                        lambda self, state, *a, **k: None)
    module = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["64"],
                                                      feature_extractor_weights_path=None)
    monkeypatch.undo()
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)
    path = tmp_path / "inception.pth"
    torch.save(module.state_dict(), path)
    metric = build_fid(str(path), inception_features=64)  # the 2048-d route costs a minute on 2 CPU cores
    images = _image_set(count=4)
    metric.update(images, real=True)
    metric.update(images, real=False)
    assert abs(float(metric.compute())) < 1e-2


def test_lpips_without_weights_is_unavailable(monkeypatch):
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    with pytest.raises(MetricUnavailable, match="--lpips-weights"):
        load_lpips(None)


def test_lpips_from_local_trunk_weights(tmp_path):
    pytest.importorskip("dcae_ext.train.losses", reason="the LPIPS loader lives in dcae_ext.train.losses")
    import torchvision

    trunk = torchvision.models.alexnet(weights=None).features.state_dict()
    path = tmp_path / "alexnet_features.pth"
    torch.save({f"features.{k}": v for k, v in trunk.items()}, path)
    lpips = load_lpips(str(path), net="alex")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(lpips(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips(x, -x)) > 0


def test_codebook_usage_all_codes_uniform():
    usage = CodebookUsage(8)
    usage.update(torch.arange(8).repeat(5))
    stats = usage.compute()
    assert stats["usage"] == 1.0 and stats["used_codes"] == 8 and stats["num_indices"] == 40
    assert stats["perplexity"] == pytest.approx(8.0)


def test_codebook_usage_one_code_and_half_the_codes():
    usage = CodebookUsage(16)
    usage.update(torch.full((3, 4, 4), 5))
    assert usage.compute()["usage"] == pytest.approx(1 / 16)
    assert usage.compute()["perplexity"] == pytest.approx(1.0)
    half = CodebookUsage(16)
    half.update(torch.arange(0, 16, 2).repeat(3))
    assert half.compute()["usage"] == 0.5
    assert half.compute()["perplexity"] == pytest.approx(8.0)


def test_codebook_usage_accumulates_over_batches_and_known_skew():
    """Frequencies (1/2, 1/4, 1/4): entropy 1.5 bits, perplexity 2^1.5, whatever the batching."""
    indices = torch.tensor([0, 0, 1, 2] * 6)
    whole, split = CodebookUsage(4), CodebookUsage(4)
    whole.update(indices)
    for part in indices.split(5):
        split.update(part)
    assert whole.compute() == split.compute()
    assert whole.compute()["perplexity"] == pytest.approx(2 ** 1.5)
    assert whole.compute()["usage"] == 0.75


def test_codebook_usage_rejects_bad_indices():
    usage = CodebookUsage(4)
    with pytest.raises(ValueError, match="indices"):
        usage.update(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="indices"):
        usage.update(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_codes"):
        CodebookUsage(0)
    assert CodebookUsage(3).compute()["usage"] == 0.0
