"""Evaluator fixes: conditional models get their labels, a non-normalised likelihood gets
no bits/dim, and densities of quantised data are dequantized with the dataset's bin width.

* Conditional models: ``nll``, ``elbo`` and ``recon`` pass the batch labels (``y=``) and the
  ``modes`` sampler cycles class labels (``cond=``), as the sample-quality metrics do; a
  conditional model on data without labels is one :class:`UserError`.
* A Bernoulli decoder on [0, 1]-valued data is not a normalised density
  (Loaiza-Ganem & Cunningham 2019): the VAE says so and the evaluator reports no bits/dim.
* Bits/dim of a density of quantised data: levels ``k * Delta`` (Delta = ``Dataset.scale``)
  own bins of width Delta, the density is scored at ``x + u``, ``u ~ U[-Delta/2, Delta/2]^D``
  (Theis et al. 2016, sec. 3.1), and the figure is an upper bound on the discrete NLL.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import fit_one_phase

import deepgen
from deepgen.data.dataset import Dataset, DataSpec, Split, replace_splits
from deepgen.errors import UserError
from deepgen.metrics import EvalContext, evaluate
from deepgen.metrics.evaluate import bin_width, dequantize
from deepgen.models.base import GenerativeModel, ModelConfig

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
        expect = ((cvae.reconstruct(x, y=digits.test.y) - x) ** 2).reshape(len(x), -1).mean(dim=1).mean()
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
    assert not vae.log_prob_normalised
    assert "not a normalised likelihood" in vae.log_prob_note and "Bernoulli" in vae.log_prob_note
    assert "k=10" in vae.log_prob_note
    r = evaluate(vae, digits, ["nll", "elbo"], batch_size=1000)
    assert math.isfinite(r["nll"]) and math.isfinite(r["elbo"])
    assert "nll_bpd" not in r and "elbo_bpd" not in r
    assert "nll_bin_width" not in r and "elbo_bin_width" not in r  # not dequantized either
    assert r["nll_note"] == vae.log_prob_note
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
    assert vae.log_prob_normalised
    assert vae.log_prob_note == "IWAE bound, k=5 importance samples (a lower bound on log p(x))"
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
    """The exact uniform density on the union of the bins, [-Delta/2, 1 + Delta/2]^D."""

    log_prob_note = "exact"
    log_prob_discrete = False

    def __init__(self, spec: DataSpec, delta: float) -> None:
        super().__init__(ModelConfig(), spec)
        self.delta = delta

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, *shape) -> (N,): -D log(1 + Delta) inside the support, -inf outside."""
        flat = x.reshape(len(x), -1).double()
        inside = ((flat >= -self.delta / 2) & (flat <= 1 + self.delta / 2)).all(dim=1)
        lp = torch.full((len(x),), -flat.shape[1] * math.log1p(self.delta), dtype=torch.float64)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


class GaussianDensity(GenerativeModel):
    """N(mu, sigma^2) independently per dimension; ``elbo`` = log p - GAP."""

    log_prob_note = "exact"
    log_prob_discrete = False
    GAP = 0.75

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
    assert digits.spec.num_levels == 17 and bin_width(digits) == pytest.approx(1 / 16)
    model = UniformOnBins(digits.spec, 1 / 16)
    r = evaluate(model, digits, ["nll"])
    # P(level) = Delta / (1 + Delta) = 1/17 per dimension: exactly log2(17) bits/dim
    # (the old bins of width 1/17 gave log2(17 * 17 / 16)).
    assert math.isfinite(r["nll"])  # every dequantized point lies in the support
    assert r["nll_bpd"] == pytest.approx(math.log2(17), rel=1e-9)
    assert r["nll_bin_width"] == pytest.approx(1 / 16)


def _levels_dataset(levels: int, n: int, seed: int = 0) -> Dataset:
    """1-D data on the grid k / (levels - 1), k uniform in 0..levels-1, scale 1 / (levels - 1)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, levels, (n, 1), generator=g, dtype=torch.uint8)
    spec = DataSpec((1,), "continuous", num_levels=levels, name=f"levels{levels}")
    return Dataset(spec.name, spec, Split(k), Split(k), scale=1 / (levels - 1))


def test_dequantized_bpd_bounds_the_exact_discrete_nll():
    levels, mu, sigma = 5, 0.4, 0.2
    ds = _levels_dataset(levels, 20000)
    delta = bin_width(ds)
    assert delta == pytest.approx(0.25)
    r = evaluate(GaussianDensity(ds.spec, mu, sigma), ds, ["nll"], batch_size=20000)
    # Exact -log P(k), P(k) = Phi((x_k + Delta/2 - mu) / sigma) - Phi((x_k - Delta/2 - mu) / sigma).
    x = ds.convert(ds.test.x).double().reshape(-1)
    phi = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731
    p = phi((x + delta / 2 - mu) / sigma) - phi((x - delta / 2 - mu) / sigma)
    exact_bpd = (-p.log()).mean().item() / math.log(2)
    # The bound in expectation over u, in closed form: E[(x + u - mu)^2] = (x - mu)^2 + Delta^2 / 12.
    e_nll = math.log(sigma) + 0.5 * math.log(2 * math.pi) + ((x - mu) ** 2 + delta**2 / 12) / (2 * sigma**2)
    bound_bpd = (e_nll - math.log(delta)).mean().item() / math.log(2)
    assert bound_bpd >= exact_bpd + 0.2  # Jensen's gap, here ~0.28 bits (wide at the tail levels)
    # The evaluator's one-draw-per-example estimate of the bound (Monte Carlo error ~0.006 bits).
    assert r["nll_bpd"] == pytest.approx(bound_bpd, abs=0.03)
    assert r["nll_bpd"] >= exact_bpd + 0.15


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
    # The inputs are x + u with u ~ U[-Delta/2, Delta/2] from the context's noise generator.
    x = ds.convert(ds.test.x)
    u = scored[0] - x
    assert float(u.abs().max()) <= bin_width(ds) / 2 + 1e-6 and float(u.abs().max()) > bin_width(ds) / 4
    expect = dequantize(x, bin_width(ds), EvalContext(seed=3).noise_generator())
    assert torch.equal(scored[0], expect)
