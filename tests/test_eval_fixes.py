"""Evaluator fixes: conditional models get their labels, a non-normalised likelihood gets
no bits/dim, and densities of quantised data are dequantized with the dataset's bin width.

* Conditional models: ``nll``, ``elbo`` and ``recon`` pass the batch labels (``cond=``) and the
  ``modes`` sampler cycles class labels (``cond=``), as the sample-quality metrics do; a
  conditional model on data without labels is one :class:`UserError`.
* A Bernoulli decoder on [0, 1]-valued data is not a normalised density
  (Loaiza-Ganem & Cunningham 2019): the VAE says so and the evaluator reports no bits/dim.
* Bits/dim of a density of quantised data: levels k in 0..L-1 own the bins [k / L, (k + 1) / L)
  of width Delta = 1 / L (``DataSpec.bin_width``), the density is scored at y = (k + u) / L,
  u ~ U[0, 1)^D (Theis et al. 2016, sec. 3.1; the flow papers' convention), and the figure is
  an upper bound on the discrete NLL.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import fit_one_phase

import deepgen
from deepgen.data import dequantize
from deepgen.data.dataset import Dataset, DataSpec, Split, replace_splits
from deepgen.errors import UserError
from deepgen.metrics import EvalContext, evaluate
from deepgen.models.base import GenerativeModel, Likelihood, ModelConfig

# -- helpers -------------------------------------------------------------------------------


def train(model: GenerativeModel, ds: Dataset, steps: int = 150, batch: int = 128, seed: int = 0) -> None:
    """Plain Adam (lr 3e-3) on the model's one phase over the training split."""
    fit_one_phase(model, ds.convert(ds.train.x), ds.train.y, steps=steps, batch=batch, seed=seed, lr=3e-3)


def without_labels(ds: Dataset) -> Dataset:
    """The dataset with its labels and classes removed."""
    return replace_splits(
        ds, spec=dataclasses.replace(ds.spec, num_classes=None), train=Split(ds.train.x), test=Split(ds.test.x)
    )


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return deepgen.load_dataset("digits")


@pytest.fixture(scope="module")
def cvae(digits: Dataset) -> GenerativeModel:
    torch.manual_seed(0)
    model = deepgen.create_model("vae", digits, conditional=True, hidden=(64,), latent_dim=4, iwae_k=20)
    train(model, digits)
    return model.eval()


# -- 1. conditional models -----------------------------------------------------------------


def test_conditional_vae_evaluates_with_its_labels(digits: Dataset, cvae: GenerativeModel):
    r = evaluate(cvae, digits, ["recon", "elbo", "nll"], batch_size=128)
    for key in ("recon_mse", "recon_nll", "elbo", "elbo_bpd", "nll", "nll_bpd"):
        assert math.isfinite(r[key]), key
    # The labels reach the model: recon is deterministic, so compare with a direct call.
    with torch.no_grad():
        x = digits.convert(digits.test.x)
        expect = ((cvae.reconstruct(x, cond=digits.test.y) - x) ** 2).reshape(len(x), -1).mean(dim=1).mean()
    assert r["recon_mse"] == pytest.approx(expect.item(), rel=1e-5)

    # Shuffled labels give another (worse) likelihood: the true labels are really used.
    perm = torch.randperm(len(digits.test), generator=torch.Generator().manual_seed(1))
    shuffled = replace_splits(digits, test=Split(digits.test.x, digits.test.y[perm]))
    assert bool((digits.test.y[perm] != digits.test.y).float().mean() > 0.5)
    r_shuffled = evaluate(cvae, shuffled, ["nll"], batch_size=128)
    assert r_shuffled["nll"] != r["nll"]
    assert r_shuffled["nll"] > r["nll"] + 1.0  # a trained CVAE explains digits better with their class


def test_conditional_model_on_unlabelled_data_is_one_user_error(digits: Dataset, cvae: GenerativeModel):
    bare = without_labels(digits)
    for name in ("nll", "elbo", "recon"):
        with pytest.raises(UserError, match="conditional.*has none"):
            evaluate(cvae, bare, [name])
    # Classes declared but a split without labels: also a UserError, not the model's own.
    no_y = replace_splits(digits, test=Split(digits.test.x))
    with pytest.raises(UserError, match="have none"):
        evaluate(cvae, no_y, ["nll"])


def test_conditional_gan_samples_get_cycled_labels():
    ring = deepgen.load_dataset("ring8")
    assert ring.spec.num_classes == 8
    torch.manual_seed(0)
    gan = deepgen.create_model("gan", ring, conditional=True)
    seen: list[torch.Tensor | None] = []
    sample = gan.sample

    def recording_sample(n: int, **kw) -> torch.Tensor:
        seen.append(kw.get("cond"))
        return sample(n, **kw)

    gan.sample = recording_sample  # type: ignore[method-assign]
    r = evaluate(gan, ring, ["modes"], limit=100, batch_size=30)
    assert r["modes_samples"] == 100 and r["modes_total"] == 8
    assert all(c is not None for c in seen) and [len(c) for c in seen] == [30, 30, 30, 10]
    labels = torch.cat(seen)  # type: ignore[arg-type]
    assert torch.equal(labels.cpu(), torch.arange(100) % 8)  # cycled over the whole draw
    with pytest.raises(UserError, match="conditional.*has none"):
        evaluate(gan, without_labels(ring), ["modes"], limit=10)


# -- 2. a likelihood that is not normalised ---------------------------------------------------


def test_bernoulli_on_continuous_data_has_no_bits_per_dim(digits: Dataset):
    torch.manual_seed(0)
    vae = deepgen.create_model("vae", digits, likelihood="bernoulli", hidden=(32,), latent_dim=4, iwae_k=10)
    assert not vae.likelihood_info().normalised
    assert "not a normalised likelihood" in vae.likelihood_info().note and "Bernoulli" in vae.likelihood_info().note
    assert "k=10" in vae.likelihood_info().note
    r = evaluate(vae, digits, ["nll", "elbo"], batch_size=1000)
    assert math.isfinite(r["nll"]) and math.isfinite(r["elbo"])
    assert "nll_bpd" not in r and "elbo_bpd" not in r
    assert "nll_bin_width" not in r and "elbo_bin_width" not in r  # not dequantized either
    assert r["nll_note"] == vae.likelihood_info().note
    assert "not a normalised likelihood" in r["elbo_note"]
    # Scored at the data points themselves (no dequantization noise).
    torch.manual_seed(0)
    with torch.no_grad():
        expect = -vae.eval().log_prob(digits.convert(digits.test.x)).double().mean().item()
    assert r["nll"] == pytest.approx(expect, rel=1e-6)


def test_normalised_heads_keep_their_note_and_bits_per_dim(digits: Dataset):
    torch.manual_seed(0)
    binary = DataSpec((16,), "binary", name="b16")
    x = (torch.rand(50, 16) < 0.3).to(torch.uint8)
    bds = Dataset("b16", binary, Split(x), Split(x))
    vae = deepgen.create_model("vae", bds, hidden=(16,), latent_dim=2, iwae_k=5)
    assert vae.likelihood_info().normalised
    assert vae.likelihood_info().note == "IWAE bound, k=5 importance samples (a lower bound on log p(x))"
    r = evaluate(vae, bds, ["nll"])
    assert r["nll_bpd"] == pytest.approx(r["nll"] / (16 * math.log(2)))
    assert "nll_bin_width" not in r


@pytest.mark.parametrize("likelihood", ["logistic-mixture", "categorical"])
def test_probabilities_of_levels_are_not_dequantized(digits: Dataset, likelihood: str):
    torch.manual_seed(0)
    vae = deepgen.create_model("vae", digits, likelihood=likelihood, hidden=(16,), latent_dim=2, iwae_k=3)
    r = evaluate(vae, digits, ["nll", "elbo"], batch_size=1000)
    assert "nll_bin_width" not in r and "elbo_bin_width" not in r
    assert r["nll_bpd"] == pytest.approx(r["nll"] / (digits.spec.dim * math.log(2)))
    torch.manual_seed(0)
    with torch.no_grad():
        expect = -vae.eval().log_prob(digits.convert(digits.test.x)).double().mean().item()
    assert r["nll"] == pytest.approx(expect, rel=1e-6)  # at the data points, no noise


# -- 3. bits/dim with the dataset's bin width ------------------------------------------------


class UniformOnBins(GenerativeModel):
    """The exact uniform density on the dequantized data's support, [0, 1)^D."""

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(ModelConfig(), spec)

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", False, "exact")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, *shape) -> (N,): 0 inside the support, -inf outside."""
        flat = x.reshape(len(x), -1).double()
        inside = ((flat >= 0) & (flat < 1)).all(dim=1)
        return torch.where(inside, torch.zeros(len(x), dtype=torch.float64), torch.full((len(x),), -math.inf, dtype=torch.float64))


class GaussianDensity(GenerativeModel):
    """N(mu, sigma^2) independently per dimension; ``elbo`` = log p - GAP."""

    GAP = 0.75

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", False, "exact")

    def __init__(self, spec: DataSpec, mu: float, sigma: float) -> None:
        super().__init__(ModelConfig(), spec)
        self.mu, self.sigma = mu, sigma
        self.inputs: list[torch.Tensor] = []

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, *shape) -> (N,) float64."""
        self.inputs.append(x.clone())
        z = (x.double() - self.mu) / self.sigma
        lp = -0.5 * z * z - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        return lp.reshape(len(x), -1).sum(dim=1)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x) - self.GAP


def test_uniform_density_on_the_bins_is_log2_levels_bits(digits: Dataset):
    assert digits.spec.num_levels == 17 and digits.spec.bin_width == pytest.approx(1 / 17)
    model = UniformOnBins(digits.spec)
    r = evaluate(model, digits, ["nll"])
    # P(level) = 1/17 per dimension: exactly log2(17) bits/dim, and every dequantized point
    # (k + u) / 17 lies inside [0, 1), where a density on [0, 1] is finite.
    assert math.isfinite(r["nll"])
    assert r["nll_bpd"] == pytest.approx(math.log2(17), rel=1e-9)
    assert r["nll_bin_width"] == pytest.approx(1 / 17)


def _levels_dataset(levels: int, n: int, seed: int = 0) -> Dataset:
    """1-D data on the grid k / (levels - 1), k uniform in 0..levels-1, scale 1 / (levels - 1)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, levels, (n, 1), generator=g, dtype=torch.uint8)
    spec = DataSpec((1,), "continuous", num_levels=levels, name=f"levels{levels}")
    return Dataset(spec.name, spec, Split(k), Split(k), scale=1 / (levels - 1))


def test_dequantized_bpd_bounds_the_exact_discrete_nll():
    levels, mu, sigma = 5, 0.4, 0.2
    ds = _levels_dataset(levels, 20000)
    delta = ds.spec.bin_width
    assert delta == pytest.approx(0.2)
    r = evaluate(GaussianDensity(ds.spec, mu, sigma), ds, ["nll"], batch_size=20000)
    # Exact -log P(k), P(k) = Phi(((k + 1) Delta - mu) / sigma) - Phi((k Delta - mu) / sigma).
    k = ds.test.x.double().reshape(-1)
    phi = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731
    p = phi(((k + 1) * delta - mu) / sigma) - phi((k * delta - mu) / sigma)
    exact_bpd = (-p.log()).mean().item() / math.log(2)
    # The bound in expectation over u, in closed form: y = (k + u) Delta has mean (k + 1/2) Delta
    # and variance Delta^2 / 12, so E[(y - mu)^2] = ((k + 1/2) Delta - mu)^2 + Delta^2 / 12.
    centre = (k + 0.5) * delta
    e_nll = math.log(sigma) + 0.5 * math.log(2 * math.pi) + ((centre - mu) ** 2 + delta**2 / 12) / (2 * sigma**2)
    bound_bpd = (e_nll - math.log(delta)).mean().item() / math.log(2)
    assert bound_bpd >= exact_bpd + 0.1  # Jensen's gap, here ~0.13 bits (wide at the tail levels)
    # The evaluator's one-draw-per-example estimate of the bound (Monte Carlo error ~0.006 bits).
    assert r["nll_bpd"] == pytest.approx(bound_bpd, abs=0.03)
    assert r["nll_bpd"] >= exact_bpd + 0.07


def test_dequantization_noise_is_reproducible_and_shared_by_nll_and_elbo():
    ds = _levels_dataset(17, 300)
    model = GaussianDensity(ds.spec, 0.5, 0.3)
    a = evaluate(model, ds, ["nll", "elbo"], seed=3, batch_size=1000)
    scored = model.inputs[:]
    b = evaluate(model, ds, ["nll"], seed=3, batch_size=1000)
    c = evaluate(model, ds, ["nll"], seed=4, batch_size=1000)
    assert a["nll"] == b["nll"] != c["nll"]
    # nll and elbo score the same dequantized inputs (elbo = log p - GAP exactly).
    assert torch.equal(scored[0], scored[1])
    assert a["elbo"] == pytest.approx(-a["nll"] - GaussianDensity.GAP, rel=1e-12)
    assert a["elbo_bpd"] == pytest.approx(a["nll_bpd"] + GaussianDensity.GAP / math.log(2), rel=1e-12)
    # The inputs are (k + u) / L with u ~ U[0, 1) from the context's noise generator: each
    # lies in its level's bin [k / L, (k + 1) / L), and the draws fill the bins.
    x = ds.convert(ds.test.x)
    k = ds.test.x.double()
    u = scored[0].double() * ds.spec.num_levels - k
    assert float(u.min()) >= 0 and float(u.max()) < 1 + 1e-5 and float(u.max()) > 0.9 and float(u.min()) < 0.1
    expect = dequantize(x, ds.spec, EvalContext(seed=3).noise_generator())
    assert torch.equal(scored[0], expect)
