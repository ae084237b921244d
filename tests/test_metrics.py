"""Metrics on inputs whose answers are known.

Pure functions on hand numbers; the evaluator on small stand-in models whose
likelihood, bound and reconstruction are known in closed form.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from deepgen.data.dataset import Dataset, DataSpec, Split
from deepgen.errors import UserError
from deepgen.metrics import (
    METRICS,
    EvalContext,
    bce,
    bits_per_dim,
    evaluate,
    format_table,
    mean_and_sem,
    mse,
    psnr,
)
from deepgen.models.base import GenerativeModel, Likelihood, ModelConfig
from deepgen.nn.likelihoods import Bernoulli

SHAPE = (1, 4, 4)
D = 16


# -- stand-in models -------------------------------------------------------------------------


class FactorisedBernoulli(GenerativeModel):
    """p(x) = prod_d p_d^x_d (1 - p_d)^(1 - x_d) with fixed p; ELBO = log p(x) - GAP."""

    GAP = 1.5
    note = "exact"

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", True, self.note)  # a probability of binary pixels

    def __init__(self, p: torch.Tensor) -> None:
        super().__init__(ModelConfig(), DataSpec(SHAPE, "binary"))
        self.register_buffer("p", p.reshape(SHAPE).double())
        self.modes_seen: list[bool] = []

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        lp = x.double() * self.p.log() + (1 - x.double()) * (1 - self.p).log()  # (N, *SHAPE)
        return lp.reshape(len(x), -1).sum(dim=1)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x) - self.GAP


class NoisyBound(FactorisedBernoulli):
    """A log_prob that draws from the global RNG, as an importance-sampled bound does."""

    note = "stochastic stand-in"

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return super().log_prob(x) + torch.rand(len(x), dtype=torch.float64)


class UniformDensity(GenerativeModel):
    """The uniform density on [0, 1]^D: log p(x) = 0 for every x."""

    discrete = False  # a density

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(ModelConfig(), spec)

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", self.discrete, "exact")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x))


class Reconstructs(GenerativeModel):
    """``reconstruct(x)`` = x (identity) or a constant; no likelihood."""

    def __init__(self, spec: DataSpec, constant: float | None = None) -> None:
        super().__init__(ModelConfig(), spec)
        self.constant = constant

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone() if self.constant is None else torch.full_like(x, self.constant)


class HeadAutoencoder(GenerativeModel):
    """An autoencoder with a Bernoulli head and the ``reconstruction_nll`` capability."""

    def __init__(self) -> None:
        spec = DataSpec(SHAPE, "binary")
        super().__init__(ModelConfig(), spec)
        torch.manual_seed(0)
        self.head = Bernoulli(spec)
        self.encoder = torch.nn.Linear(D, 3)
        self.decoder = torch.nn.Sequential(torch.nn.Linear(3, D), torch.nn.Unflatten(1, (1, *SHAPE)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(len(x), -1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.mean(self.decoder(self.encode(x)))

    def reconstruction_nll(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.nll(self.decoder(self.encode(x)), x)


# -- data ----------------------------------------------------------------------------------


def binary_dataset(n: int = 103, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, *SHAPE, generator=g) < 0.3).to(torch.uint8)
    return Dataset("toy-binary", DataSpec(SHAPE, "binary", name="toy-binary"), Split(x[:10]), Split(x))


def grey_dataset(n: int = 64) -> Dataset:
    """uint8 grey pixels, dynamically binarized (as mnist-binarized)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8)
    return Dataset(
        "toy-grey", DataSpec(SHAPE, "binary"), Split(x[:8]), Split(x), scale=1 / 255, binarize=True
    )


def closed_form_nll(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    x = x.reshape(len(x), -1).double()
    p = p.reshape(1, -1).double()
    return -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=1)


P = torch.linspace(0.05, 0.9, D)


# -- pure functions ---------------------------------------------------------------------------


def test_bits_per_dim_hand_numbers():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(86.76, 784) == pytest.approx(86.76 / (784 * math.log(2)))
    # Uniform dequantization: a density of 0 nats on a unit cube of bins of width 1/256 is 8 bits/dim.
    assert bits_per_dim(0.0, 3072, bin_width=1 / 256) == pytest.approx(8.0)
    # 17 levels k / 16 (digits): bins of width 1/16, not 1/17.
    assert bits_per_dim(0.0, 64, bin_width=1 / 16) == pytest.approx(4.0)
    # (NLL / D - ln Delta) / ln 2 with NLL = -D * 5 ln 2, Delta = 1/256 -> 8 - 5 = 3 bits.
    assert bits_per_dim(-784 * 5 * math.log(2), 784, bin_width=1 / 256) == pytest.approx(3.0)
    # No bin width: the NLL is a probability of discrete values (or a density of real data).
    assert bits_per_dim(100.0, 50) == pytest.approx(2 / math.log(2))


def test_bits_per_dim_keeps_tensor_shape_and_rejects_bad_dim():
    t = bits_per_dim(torch.tensor([0.0, 10 * math.log(2)]), 10)
    assert isinstance(t, torch.Tensor) and t.shape == (2,)
    assert torch.allclose(t, torch.tensor([0.0, 1.0]))
    assert isinstance(bits_per_dim(1.0, 1), float)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 1, bin_width=0.0)
    with pytest.raises(TypeError):  # the bin width is keyword-only (it once was num_levels)
        bits_per_dim(1.0, 1, 256)  # type: ignore[misc]


def test_mean_and_sem():
    mean, sem = mean_and_sem(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert sem == pytest.approx(math.sqrt(5 / 3) / 2)  # unbiased std sqrt(5/3), over sqrt(4)
    mean, sem = mean_and_sem(torch.tensor([7.0]))
    assert mean == 7.0 and math.isnan(sem)


def test_mse_psnr_bce_constructed():
    x = torch.zeros(3, *SHAPE)
    x_hat = torch.full_like(x, 0.1)
    assert torch.allclose(mse(x, x_hat), torch.full((3,), 0.01))
    assert torch.allclose(mse(x, x_hat, "sum"), torch.full((3,), 0.01 * D))
    assert torch.allclose(psnr(x, x_hat), torch.full((3,), 20.0))  # 10 log10(1 / 0.01)
    assert torch.allclose(psnr(x * 255, x_hat * 255, data_range=255.0), torch.full((3,), 20.0), atol=1e-4)
    assert torch.allclose(psnr(x, x), torch.full((3,), 100.0))  # floored at eps = 1e-10
    # Half-grey prediction of binary pixels: ln 2 nats per pixel.
    xb = (torch.arange(3 * D).reshape(3, *SHAPE) % 2).float()
    assert torch.allclose(bce(xb, torch.full_like(xb, 0.5)), torch.full((3,), D * math.log(2)))
    assert torch.allclose(mse(xb, torch.full_like(xb, 0.5)), torch.full((3,), 0.25))
    with pytest.raises(ValueError):
        mse(x, x_hat[:2])


# -- the evaluator ---------------------------------------------------------------------------------


def test_nll_of_exact_bernoulli_matches_closed_form():
    ds = binary_dataset()
    model = FactorisedBernoulli(P)
    r = evaluate(model, ds, ["nll"], batch_size=10)  # 103 examples: last batch is short
    expect = closed_form_nll(ds.test.x, P)
    assert r["split"] == "test" and r["n"] == 103
    assert r["nll"] == pytest.approx(expect.mean().item(), rel=1e-9)
    assert r["nll_sem"] == pytest.approx((expect.std() / math.sqrt(103)).item(), rel=1e-9)
    assert r["nll_bpd"] == pytest.approx(expect.mean().item() / (D * math.log(2)), rel=1e-9)
    assert r["nll_note"] == "exact"


def test_elbo_limit_and_train_split():
    ds = binary_dataset()
    model = FactorisedBernoulli(P)
    r = evaluate(model, ds, "elbo, nll", limit=40, batch_size=16)
    expect = closed_form_nll(ds.test.x[:40], P).mean().item()
    assert r["n"] == 40
    assert r["elbo"] == pytest.approx(-expect - FactorisedBernoulli.GAP, rel=1e-9)
    assert r["elbo_bpd"] == pytest.approx((expect + FactorisedBernoulli.GAP) / (D * math.log(2)), rel=1e-9)
    r = evaluate(model, ds, ["nll"], split="train")
    assert r["split"] == "train" and r["n"] == 10
    assert r["nll"] == pytest.approx(closed_form_nll(ds.train.x, P).mean().item(), rel=1e-9)


def test_dynamic_binarization_is_seeded_and_shared_across_metrics():
    ds = grey_dataset()
    model = FactorisedBernoulli(P)
    a = evaluate(model, ds, ["nll"], seed=3)
    b = evaluate(model, ds, ["elbo", "nll"], seed=3, batch_size=7)
    c = evaluate(model, ds, ["nll"], seed=4)
    assert a["nll"] == b["nll"]  # same draws, whatever else was asked and however batched
    assert b["elbo"] == pytest.approx(-b["nll"] - FactorisedBernoulli.GAP)  # same images for both
    assert a["nll"] != c["nll"]
    # The seeded draws are exactly Bernoulli(x / 255) from a generator seeded with `seed`.
    g = torch.Generator().manual_seed(3)
    x = torch.bernoulli(ds.test.x.float() / 255, generator=g)
    assert a["nll"] == pytest.approx(closed_form_nll(x, P).mean().item(), rel=1e-9)


def test_model_sampling_is_reproducible_and_leaves_caller_rng_alone():
    ds = binary_dataset()
    model = NoisyBound(P)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = evaluate(model, ds, ["nll"], seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = evaluate(model, ds, ["nll"], seed=5)
    c = evaluate(model, ds, ["nll"], seed=6)
    assert a["nll"] == b["nll"] != c["nll"]


def test_eval_mode_during_and_mode_restored_after():
    model = FactorisedBernoulli(P)
    model.train()
    evaluate(model, binary_dataset(), ["nll"], batch_size=50)
    assert model.modes_seen and not any(model.modes_seen)
    assert model.training
    model.eval()
    evaluate(model, binary_dataset(), ["nll"])
    assert not model.training


def test_bpd_of_density_on_quantised_data_uses_dequantization():
    spec = DataSpec(SHAPE, "continuous", num_levels=256)
    x = torch.randint(0, 256, (20, *SHAPE), dtype=torch.uint8)
    ds = Dataset("toy-grey", spec, Split(x), Split(x), scale=1 / 255)
    model = UniformDensity(spec)
    r = evaluate(model, ds, ["nll"])
    assert r["nll"] == 0.0
    # Levels k dequantized to (k + u) / 256 own bins of width 1/256: log2(256) = 8 bits/dim,
    # the published tables' convention (BENCHMARKS.md).
    assert r["nll_bpd"] == pytest.approx(math.log2(256))
    assert r["nll_bin_width"] == pytest.approx(1 / 256)
    model.discrete = True  # a probability mass on the levels: no correction
    assert evaluate(model, ds, ["nll"])["nll_bpd"] == 0.0


def test_recon_identity_is_zero_and_constant_is_known():
    ds = binary_dataset()
    r = evaluate(Reconstructs(ds.spec), ds, ["recon"])
    assert r["recon_mse"] == 0.0 and r["recon_sse"] == 0.0
    assert r["recon_psnr"] == pytest.approx(100.0)
    assert r["recon_bce"] == pytest.approx(0.0, abs=1e-4)
    r = evaluate(Reconstructs(ds.spec, constant=0.5), ds, ["recon"])
    assert r["recon_mse"] == pytest.approx(0.25)
    assert r["recon_sse"] == pytest.approx(0.25 * D)
    assert r["recon_psnr"] == pytest.approx(10 * math.log10(4))
    assert r["recon_bce"] == pytest.approx(D * math.log(2))
    assert "recon_nll" not in r  # no likelihood head


def test_recon_head_nll_from_the_reconstruction_nll_capability():
    ds = binary_dataset()
    model = HeadAutoencoder()
    r = evaluate(model, ds, ["recon"], batch_size=32)
    with torch.no_grad():
        x = ds.test.x.float()
        params = model.decoder(model.encode(x))
        expect = model.head.nll(params, x).mean().item()
        p = torch.sigmoid(params[:, 0])
    assert r["recon_nll"] == pytest.approx(expect, rel=1e-5)
    assert r["recon_bce"] == pytest.approx(expect, rel=1e-4)  # Bernoulli head = BCE of the mean
    assert r["recon_mse"] == pytest.approx(((p - x) ** 2).mean().item(), rel=1e-5)


def test_real_families_through_the_evaluator():
    """The registered ``vae`` and ``ae`` on a small binary dataset: keys, and IWAE >= ELBO."""
    deepgen = pytest.importorskip("deepgen")
    ds = binary_dataset(n=200)
    torch.manual_seed(0)
    vae = deepgen.create_model("vae", ds, hidden=(32,), latent_dim=4, likelihood="bernoulli", iwae_k=500)
    r = evaluate(vae, ds, ["elbo", "nll", "recon"], batch_size=64)
    assert r["n"] == 200 and "IWAE" in r["nll_note"]
    # Burda et al. 2016, Theorem 1: the k-sample bound is at least the ELBO (in expectation).
    assert r["nll"] < -r["elbo"]
    assert r["recon_nll"] > 0 and 0 < r["recon_mse"] < 1
    ae = deepgen.create_model("ae", ds, hidden=(32,), latent_dim=4)
    r = evaluate(ae, ds, ["recon"])
    assert r["recon_nll"] == pytest.approx(r["recon_bce"], rel=1e-3)  # its auto head is Bernoulli
    with pytest.raises(UserError, match="supports: recon"):
        evaluate(ae, ds, ["nll", "recon"])


def test_missing_capability_names_metric_capability_and_supported():
    ds = binary_dataset()
    with pytest.raises(UserError) as e:
        evaluate(Reconstructs(ds.spec), ds, ["recon", "nll"])
    msg = str(e.value)
    assert "'nll'" in msg and "log_prob" in msg and "LogProb" in msg
    assert "supports: recon" in msg
    with pytest.raises(UserError, match="HasELBO"):
        evaluate(UniformDensity(ds.spec), ds, "elbo")


def test_unknown_metric_lists_accepted():
    ds = binary_dataset()
    with pytest.raises(UserError) as e:
        evaluate(FactorisedBernoulli(P), ds, ["nll", "fid-ish"])
    assert "'fid-ish'" in str(e.value)
    for name in METRICS.names():
        assert name in str(e.value)
    with pytest.raises(UserError):
        evaluate(FactorisedBernoulli(P), ds, [])
    with pytest.raises(UserError, match="split"):
        evaluate(FactorisedBernoulli(P), ds, ["nll"], split="valid")


def test_eval_context_is_frozen_and_generator_repeats():
    ctx = EvalContext(seed=9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.seed = 1  # type: ignore[misc]
    assert torch.equal(torch.rand(4, generator=ctx.generator()), torch.rand(4, generator=ctx.generator()))
    assert ctx.num_examples(binary_dataset()) == 103
    assert EvalContext(limit=500).num_examples(binary_dataset()) == 103
    with pytest.raises(UserError):
        EvalContext(batch_size=0)


def test_format_table_aligns_two_columns():
    text = format_table({"split": "test", "n": 10000, "nll": 86.76123, "nll_sem": 0.0456, "tiny": 1e-6})
    lines = text.splitlines()
    assert len(lines) == 5
    col = lines[0].index("test")  # the value column
    assert all(line[col - 2 : col] == "  " and line[:col].strip() for line in lines)
    assert len({len(line) for line in lines[1:]}) == 1  # numbers share their right edge
    assert "86.7612" in text and "1.0000e-06" in text and "10000" in text
    assert format_table({}) == ""
