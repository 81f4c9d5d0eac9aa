"""dcae_ext.integrations.vector_quantize: an accelerated vector_quantize_pytorch.VectorQuantize trains
exactly as the library's own, step by step (indices, quantized output, losses, gradients, codebook and
EMA buffers), with its search on dcae_ext's op and no N x K distances or one-hot; options that need
the N x K distances leave the module unchanged; restore undoes it; the library stays optional."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from dcae_ext.testing import forbid_reference_fallback

vqp = pytest.importorskip("vector_quantize_pytorch")
library = pytest.importorskip("vector_quantize_pytorch.vector_quantize_pytorch")
from dcae_ext.integrations import vector_quantize as integration  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, CODES = 16, 64


def _library_release():
    from importlib.metadata import version

    return tuple(int(part) for part in version("vector-quantize-pytorch").split(".")[:2])


@pytest.fixture(autouse=True)
def _kernels_must_run(monkeypatch):
    forbid_reference_fallback(monkeypatch)


@pytest.fixture
def search_calls(monkeypatch):
    """Counts of the searches made: ours (nearest_code) and the library's N x K tensors (its cdist,
    and the one_hot of its sampler)."""
    calls = {"ours": 0, "cdist": 0, "one_hot": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(integration, "nearest_code", counted("ours", integration.nearest_code))
    monkeypatch.setattr(library, "cdist", counted("cdist", library.cdist))
    monkeypatch.setattr(torch.nn.functional, "one_hot", counted("one_hot", torch.nn.functional.one_hot))
    return calls


def _pair(**options):
    """(stock, accelerated) VectorQuantize with the same weights and buffers."""
    torch.manual_seed(0)
    stock = vqp.VectorQuantize(dim=DIM, codebook_size=CODES, **options)
    fast = copy.deepcopy(stock)
    summary = integration.accelerate(fast)
    assert summary.accelerated == [""] and not summary.unchanged, summary
    return stock, fast


def _inputs(step, shape=(3, 40, DIM)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(step)) * 2


def _step(module, x, step, optimizer=None, **call):
    """One training step: forward, backward of sum(quantize * g) + loss, optimizer step. Returns
    everything that must match."""
    torch.manual_seed(1000 + step)  # dead-code expiry and k-means draw from the global generator
    x = x.clone().requires_grad_(True)
    quantize, indices, loss = module(x, **call)
    grad = torch.randn(quantize.shape, generator=torch.Generator().manual_seed(step + 7))
    ((quantize * grad).sum() + loss).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()
    state = {name: t.clone() for name, t in module.state_dict().items()}
    return {"indices": indices, "quantize": quantize.detach(), "loss": loss.detach(), "x.grad": x.grad,
            **{f"grad {k}": v for k, v in grads.items()}, **{f"state {k}": v for k, v in state.items()}}


def _assert_same(stock: dict, fast: dict, step: int):
    assert stock.keys() == fast.keys()
    for key in stock:
        if key == "indices" or stock[key].dtype in (torch.bool, torch.int64):
            assert torch.equal(stock[key], fast[key]), (step, key)
        else:  # equal but for float32 summation order (the library sums a one-hot product, we scatter)
            torch.testing.assert_close(fast[key], stock[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{step} {key}: {m}")


def _train_side_by_side(stock, fast, steps=4, shape=(3, 40, DIM), learn=False, **call):
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) if learn else None for m in (stock, fast)]
    for step in range(steps):
        x = _inputs(step, shape)
        _assert_same(_step(stock, x, step, optimizers[0], **call), _step(fast, x, step, optimizers[1], **call), step)


CONFIGS = {
    "euclidean EMA (defaults: rotation trick)": dict(),
    "cosine EMA": dict(use_cosine_sim=True),
    "euclidean learnable codebook": dict(learnable_codebook=True, ema_update=False),
    "euclidean, plain straight-through, commitment 0.25": dict(rotation_trick=False, commitment_weight=0.25),
    "dead-code expiry": dict(threshold_ema_dead_code=2, decay=0.5),
    "cosine dead-code expiry": dict(use_cosine_sim=True, threshold_ema_dead_code=2, decay=0.5),
    "k-means init": dict(kmeans_init=True, kmeans_iters=3),
    "orthogonal regularisation": dict(orthogonal_reg_weight=0.5),
    "heads sharing a codebook": dict(heads=2, codebook_dim=8),
    "heads with their own codebooks": dict(heads=2, separate_codebook_per_head=True, codebook_dim=8),
    "projection": dict(codebook_dim=8),
}
if _library_release() >= (1, 34):  # expiry relative to the mean cluster size, since 1.34
    CONFIGS["dead-code ratio, reset ratio (1.34)"] = dict(dead_code_threshold_ratio=0.5, reset_cluster_size_ratio=0.3,
                                                        decay=0.5)


@pytest.mark.parametrize("options", list(CONFIGS.values()), ids=list(CONFIGS))
def test_training_steps_equal_the_library(options, search_calls):
    stock, fast = _pair(**options)
    learn = bool(options.get("learnable_codebook") or options.get("orthogonal_reg_weight"))
    _train_side_by_side(stock, fast, learn=learn)
    heads = 2 if options.get("separate_codebook_per_head") else 1
    assert search_calls["ours"] == 4 * heads
    # the stock module's calls only: the accelerated one built no N x K distances or one-hot (but
    # for the library's own k-means init, 3 iterations on each side)
    assert search_calls["one_hot"] == 4
    kmeans = 2 * 3 if options.get("kmeans_init") else 0
    assert search_calls["cdist"] == (0 if options.get("use_cosine_sim") else 4 + kmeans)
    # the codebook moved (EMA, expiry or the optimizer), so the steps compared more than the start
    assert not torch.equal(stock._codebook.embed, _pair(**options)[0]._codebook.embed)


def test_masked_sequences_and_eval_mode_equal_the_library():
    stock, fast = _pair(threshold_ema_dead_code=1)
    lens = torch.tensor([40, 17, 3])
    _train_side_by_side(stock, fast, lens=lens)
    stock.eval()
    fast.eval()
    with torch.no_grad():
        for step in range(2):
            x = _inputs(10 + step)
            for got, want in zip(fast(x), stock(x)):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_image_feature_maps_equal_the_library():
    stock, fast = _pair(accept_image_fmap=True)
    _train_side_by_side(stock, fast, shape=(2, DIM, 5, 7))


def test_exact_index_gives_the_float64_argmax():
    from dcae_ext.ops import reference

    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=DIM, codebook_size=CODES)
    integration.accelerate(vq, exact_index=True)
    vq.eval()
    x = _inputs(0)
    _, indices, _ = vq(x)
    assert torch.equal(indices, reference.nearest_code(x, vq.codebook, "l2", exact_index=True))


def test_residual_vq_layers_are_accelerated():
    torch.manual_seed(0)
    stock = vqp.ResidualVQ(dim=DIM, num_quantizers=3, codebook_size=CODES)
    fast = copy.deepcopy(stock)
    summary = integration.accelerate(fast)
    assert summary.accelerated == ["layers.0", "layers.1", "layers.2"]
    for step in range(3):
        x = _inputs(step)
        outs = []
        for module in (stock, fast):
            torch.manual_seed(step)
            quantize, indices, losses = module(x)
            outs.append((quantize, indices, losses, module.state_dict()))
        for got, want in zip(outs[1][:3], outs[0][:3]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for key, value in outs[0][3].items():
            torch.testing.assert_close(outs[1][3][key], value, rtol=1e-5, atol=1e-6)


def test_calls_that_need_the_distances_run_the_library_search(search_calls):
    # indices= returns a cross-entropy over the N x K distances: that call runs the stock search
    stock, fast = _pair()
    x = _inputs(0)
    codes = torch.randint(0, CODES, x.shape[:-1], generator=torch.Generator().manual_seed(3))
    got, want = fast(x, indices=codes), stock(x, indices=codes)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert search_calls["ours"] == 0 and search_calls["cdist"] == 2
    fast.eval()
    stock.eval()
    for a, b in zip(fast(x, topk=2), stock(x, topk=2)):
        torch.testing.assert_close(a, b)
    assert search_calls["ours"] == 0
    fast(x)
    assert search_calls["ours"] == 1  # and the next plain call is ours again


REFUSED = {
    "stochastic_sample_codes": dict(stochastic_sample_codes=True),
    "straight_through": dict(straight_through=True, rotation_trick=False),
    "commitment_use_cross_entropy_loss": dict(commitment_use_cross_entropy_loss=True),
    "codebook_diversity_loss_weight": dict(codebook_diversity_loss_weight=0.1),
    "affine_param": dict(affine_param=True),
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_options_we_do_not_cover_leave_the_module_unchanged(option):
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=DIM, codebook_size=CODES, **REFUSED[option])
    summary = integration.accelerate(vq)
    assert summary.accelerated == [] and option in summary.unchanged[""]
    assert option in str(summary)
    assert "forward" not in vq.__dict__ and "forward" not in vq._codebook.__dict__
    assert not integration.is_accelerated(vq)


def test_a_model_with_both_kinds_reports_each():
    model = torch.nn.ModuleDict({"plain": vqp.VectorQuantize(dim=DIM, codebook_size=CODES),
                                 "noisy": vqp.VectorQuantize(dim=DIM, codebook_size=CODES,
                                                             stochastic_sample_codes=True)})
    summary = integration.accelerate(model)
    assert summary.accelerated == ["plain"] and list(summary.unchanged) == ["noisy"]
    assert integration.is_accelerated(model["plain"]) and not integration.is_accelerated(model["noisy"])
    assert str(summary).startswith("accelerated 1 VectorQuantize: 'plain'\nunchanged 'noisy': stochastic")
    assert "left to vector-quantize-pytorch" in str(summary)


def test_the_summary_names_a_lone_module_in_words():
    summary = integration.accelerate(vqp.VectorQuantize(dim=DIM, codebook_size=CODES))
    assert str(summary).splitlines()[0] == "accelerated 1 VectorQuantize: the module itself"


def test_restore_and_the_class_is_never_patched(search_calls):
    fast = vqp.VectorQuantize(dim=DIM, codebook_size=CODES)
    tensors_before = fast.state_dict(keep_vars=True)
    classes_before = (vqp.VectorQuantize.forward, library.Codebook.forward)
    integration.accelerate(fast)
    other = vqp.VectorQuantize(dim=DIM, codebook_size=CODES)
    assert not integration.is_accelerated(other)  # another instance of the class: untouched
    assert (vqp.VectorQuantize.forward, library.Codebook.forward) == classes_before
    assert type(fast) is vqp.VectorQuantize and type(fast._codebook) is library.Codebook
    after = fast.state_dict(keep_vars=True)
    assert after.keys() == tensors_before.keys() and all(after[k] is t for k, t in tensors_before.items())
    assert integration.accelerate(fast).accelerated == [""]  # twice: no double wrapping
    assert integration.restore(fast) == 1
    assert not integration.is_accelerated(fast) and "forward" not in fast.__dict__
    assert not any(key.startswith("_dcae_ext") for m in fast.modules() for key in m.__dict__)
    fast(_inputs(0))
    assert search_calls["ours"] == 0
    assert integration.restore(fast) == 0


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="argument 'module'"):
        integration.accelerate(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="argument 'module'"):
        integration.accelerate("VectorQuantize")
    with pytest.raises(ValueError, match="argument 'exact_index'"):
        integration.accelerate(vqp.VectorQuantize(dim=DIM, codebook_size=CODES), exact_index=1)


def test_the_library_stays_optional():
    # importing the package and the integration module imports no vector_quantize_pytorch
    code = ("import sys, dcae_ext, dcae_ext.ops, dcae_ext.integrations, dcae_ext.integrations.vector_quantize; "
            "assert not any(m.startswith('vector_quantize_pytorch') for m in sys.modules), 'imported'")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(_library_release() < (1, 34), reason="the README's EMA step is the library's since 1.34 "
                    "(earlier releases Laplace-smoothed the counts)")
def test_the_readme_quantizer_equals_the_library_ema_step():
    # README "Using the kernel in your own VQ model": its EMA quantizer built on ops.vq_quantize
    # gives vector-quantize-pytorch's indices, commitment loss and codebook updates
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as readme:
        section = readme.read().split("## Using the kernel in your own VQ model")[1]
    namespace = {"torch": torch}
    exec(section.split("```python")[1].split("```")[0], namespace)
    torch.manual_seed(0)
    stock = vqp.VectorQuantize(dim=8, codebook_size=CODES, decay=0.99, rotation_trick=False, commitment_weight=0.25)
    ours = namespace["VectorQuantizer"](CODES, 8)
    with torch.no_grad():
        ours.codebook.copy_(stock.codebook)
        ours.embed_sum.copy_(stock._codebook.embed_avg[0])
        ours.cluster_size.copy_(stock._codebook.cluster_size[0])
    for step in range(3):
        x = _inputs(step, (2, 30, 8))
        (_, want_indices, want_loss), (_, indices, loss) = stock(x), ours(x)
        assert torch.equal(indices, want_indices)
        torch.testing.assert_close(loss, want_loss)
        torch.testing.assert_close(ours.codebook, stock.codebook)


def test_an_accelerated_step_allocates_no_rows_by_codes_tensor():
    # N x K float32 is 64 MB here (the stock step peaks near 24 bytes per pair: 384 MB); the
    # accelerated one holds the search's fixed workspace and O((N + K) D) tensors
    from dcae_ext.bench.memory import tracked_peak_mb

    n, k, d = 2048, 8192, 32
    torch.manual_seed(0)
    vq = vqp.VectorQuantize(dim=d, codebook_size=k, threshold_ema_dead_code=1)
    integration.accelerate(vq)
    x = torch.randn(1, n, d, requires_grad=True)

    def step():
        quantize, _, loss = vq(x)
        torch.autograd.grad((quantize.sum() + loss,), (x,))

    step()
    assert tracked_peak_mb(step) < n * k * 4 / 2**20 / 2
