"""Review s13: the GAN family (and the VAE's DReG hook) against import cost, torch.compile and quantised data.

Each test names the defect it pins:

* loading the families (``create_model``, ``model_names``: every use of deepgen) imported
  torch._dynamo, about 2.5 s per process, because ``@torch.compiler.disable`` on three
  methods ran at class definition; the methods must still run eagerly when traced;
* a GAN's samples of quantised [0, 1] data (8-bit images, the digits' 17 levels) were
  G's raw values, not the data's levels, unlike ddpm's and the flows'.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import deepgen
from deepgen.data.dataset import Batch, DataSpec

DIGITS = DataSpec((1, 8, 8), "continuous", num_levels=17, num_classes=10, name="digits")
RING = DataSpec((2,), "real", name="ring")
SMALL = {"noise_dim": 4, "g_hidden": (16,), "d_hidden": (16, 8), "conv_width": 4}
GANS = ["gan", "dcgan", "wgan", "wgan-gp"]


def _gan(name: str, spec: DataSpec = DIGITS, seed: int = 0, **over) -> deepgen.GenerativeModel:
    torch.manual_seed(seed)
    return deepgen.create_model(name, spec, **{**SMALL, **over})


def _batch(spec: DataSpec, n: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *spec.shape, generator=g)
    if spec.num_levels:
        x = (x * (spec.num_levels - 1)).round() / (spec.num_levels - 1)
    return Batch(x)


# -- torch._dynamo was imported by the class-level @torch.compiler.disable ----------------------------------


def test_using_gans_and_vaes_does_not_import_torch_dynamo() -> None:
    """A fresh process builds, trains one step of and samples a GAN, a WGAN-GP (its gradient
    penalty), an unrolled GAN and a DReG VAE (its hook): the three formerly decorated
    methods all run, and torch._dynamo (2.5 s to import) is never loaded."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        import deepgen
        from deepgen.data.dataset import Batch, DataSpec

        spec = DataSpec((1, 8, 8), "continuous", num_levels=17, name="digits")
        x = torch.rand(8, 1, 8, 8)
        small = dict(noise_dim=4, g_hidden=(16,), d_hidden=(16, 8))
        for name, over, phase in [
            ("wgan-gp", {}, "critic"),                       # gradient_penalty
            ("gan", {"unrolled_steps": 1}, "generator"),   # _unrolled_generator_objective
        ]:
            model = deepgen.create_model(name, spec, **small, **over)
            model.loss(Batch(x), phase).loss.backward()
            model.sample(2)
        vae = deepgen.create_model("vae", spec, hidden=(16,), latent_dim=2, objective="iwae", estimator="dreg", train_k=2)
        vae.loss(Batch(x)).loss.backward()                  # _DReGWeights.track
        vae.sample(2)
        deepgen.model_names()
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "loading or using the gan and vae families imported torch._dynamo"


def test_the_lazily_disabled_methods_keep_their_names_and_docstrings() -> None:
    from deepgen.models import gan, vae

    assert gan.WGANGP.gradient_penalty.__name__ == "gradient_penalty"
    assert "lambda E" in (gan.WGANGP.gradient_penalty.__doc__ or "")
    assert gan.GAN._unrolled_generator_objective.__name__ == "_unrolled_generator_objective"
    assert vae._DReGWeights.track.__name__ == "track"


def _grads(model: torch.nn.Module, loss, batch: Batch, phase: str, seed: int) -> list[torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)
    loss(batch, phase).loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("name", "over", "phase"),
    [("wgan-gp", {}, "critic"), ("gan", {"unrolled_steps": 2}, "generator"), ("wgan", {"unrolled_steps": 1}, "generator")],
)
def test_double_backward_parts_still_run_eagerly_under_torch_compile(name: str, over: dict, phase: str) -> None:
    """The gradient penalty and the unrolled objective differentiate through a gradient
    (double backward), which AOTAutograd refuses: traced, the compiled loss would raise.
    Compiled first (the lazy decorator's first call is under tracing), then three more
    steps with recompilation forbidden, as the trainer's CUDA-graph capture does after its
    warm-up: the compiled loss gives the eager gradients every time."""
    model = _gan(name, RING, **over)
    batch = _batch(RING, 16)
    compiled = torch.compile(model.loss, backend="aot_eager", dynamic=False)
    seen = [_grads(model, compiled, batch, phase, seed=1), _grads(model, compiled, batch, phase, seed=2)]  # warm-up
    with torch.compiler.set_stance("fail_on_recompile"):
        seen += [_grads(model, compiled, batch, phase, seed=s) for s in (3, 4)]
    for seed, got in zip((1, 2, 3, 4), seen):
        want = _grads(model, model.loss, batch, phase, seed=seed)
        assert len(want) == len(got) > 0
        for a, b in zip(want, got):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# -- GAN samples of quantised data were not on the data's levels --------------------------------------------


@pytest.mark.parametrize("name", GANS)
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_gan_samples_of_quantised_data_are_on_its_levels(name: str, network: str) -> None:
    model = _gan(name, network=network).eval()
    for mean in (True, False):
        s = model.sample(16, generator=torch.Generator().manual_seed(0), mean=mean)
        k = s * 16
        assert s.min() >= 0 and s.max() <= 1 and torch.equal(k, k.round()), "digits have 17 levels k / 16"
        assert len(k.unique()) > 2, "more than the two end levels: G's values are rounded, not clamped"


def test_gan_samples_of_8_bit_images_are_on_256_levels_and_of_other_kinds_unchanged() -> None:
    eight_bit = DataSpec((1, 8, 8), "continuous", num_levels=256, name="mnist-like")
    s = _gan("dcgan", eight_bit).eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s * 255, (s * 255).round())
    binary = DataSpec((1, 8, 8), "binary", name="bin")
    b = _gan("gan", binary).eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    discrete = DataSpec((1, 8, 8), "discrete", num_levels=5, name="k")
    d = _gan("gan", discrete).eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(d, d.round()) and d.min() >= 0 and d.max() <= 4
    # Continuous data without levels keeps G's values in [0, 1]; real data is not rounded.
    plain = _gan("gan", DataSpec((1, 8, 8), "continuous", name="c")).eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(plain * 16, (plain * 16).round())
    r = _gan("gan", RING).eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(r, r.round())


def test_trained_gan_samples_match_the_datas_levels_through_the_trainer(tmp_path) -> None:
    """Through the public API end to end: a GAN trained a few steps on the digits (17 levels)."""
    ds = deepgen.load_dataset("digits", max_train=128)
    model = deepgen.create_model("gan", ds, **SMALL)
    cfg = deepgen.TrainConfig(max_steps=3, batch_size=32, progress=False, tensorboard=False, device="cpu")
    deepgen.Trainer(model, ds, cfg, tmp_path / "run").fit()
    s = model.eval().sample(8, generator=torch.Generator().manual_seed(0))
    levels = ds.spec.num_levels - 1
    assert torch.equal(s * levels, (s * levels).round())
