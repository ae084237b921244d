"""The diffusion family (``ddpm``): a trained toy model's samples and DDIM codes, guidance,
label dropout, the variational bound against closed forms, settings and the command line.

The samplers' maths (schedules, posteriors, spacings, each step) is tests/test_samplers.py;
the networks are tests/test_unet.py; the conformance suites cover ``ddpm`` as every model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import deepgen
from deepgen.cli import main
from deepgen.data import DataConfig
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.metrics.modes import mode_coverage
from deepgen.models.base import NULL_LABEL
from deepgen.models.diffusion import discretized_gaussian_log_prob, slerp
from deepgen.training import TrainConfig, Trainer, seed_all

# -- a model trained on a 2-D mixture -------------------------------------------------------------


@pytest.fixture(scope="module")
def ring():
    """ddpm (MLP denoiser, T = 200) trained 1,000 steps on ring8 widened to std 0.1; the EMA weights."""
    ds = deepgen.load_dataset(DataConfig(name="ring8", toy_noise=0.1))
    seed_all(0)
    model = deepgen.create_model("ddpm", ds, hidden=(128, 128, 128), lr=1e-3, timesteps=200)
    trainer = Trainer(model, ds, TrainConfig(epochs=1000, max_steps=1000, batch_size=256, progress=False, tensorboard=False, val_limit=0, ema=0.99), None)
    trainer.fit()
    return trainer.eval_model, ds


@pytest.mark.parametrize("sampling", [
    {"sampler": "ddim", "steps": 50}, {"sampler": "ddpm", "steps": 200}, {"sampler": "dpm-solver++", "steps": 20},
    {"sampler": "ddim", "steps": 20, "eta": 1.0},
])
def test_samples_of_a_briefly_trained_model_sit_on_the_modes(ring, sampling):
    """The GAN lab's mode metric (VEEGAN / PacGAN): every one of the 8 modes captured, most
    samples within 3 std of a mode (60% measured; a standard normal puts about 20% there),
    and the modes hit evenly (reverse KL to uniform near 0), for every sampler."""
    model, ds = ring
    model.config = model.config.replace(**sampling)
    x = model.sample(2000, generator=torch.Generator().manual_seed(0))
    r = mode_coverage(x, ds.meta["modes"], ds.meta["mode_std"])
    assert r["modes"] == 8 and r["hq_percent"] > 45 and r["reverse_kl"] < 0.05, (sampling, r)


def test_ddim_codes_decode_back_to_the_data(ring):
    """DDIM with eta = 0 is an ODE: encode x_0 to x_T and decode it back (Song et al. 2021,
    sec. 5.4): the ring's points come back within 0.03 (the mixture's std is 0.1), and the
    codes look like the Gaussian prior."""
    model, ds = ring
    model.config = model.config.replace(steps=100)
    x = ds.test.x[:200].float()
    z = model.encode(x)
    assert z.shape == (200, 2) and 0.7 < float(z.std()) < 1.3
    back = model.decode(z)
    assert float((back - x).abs().mean()) < 0.03
    assert not torch.allclose(z, x, atol=0.1)  # a real code, not the identity
    path = model.interpolate(x[0], x[1], steps=5)
    assert path.shape == (5, 2) and torch.allclose(path[0], back[0], atol=1e-5) and torch.allclose(path[-1], back[1], atol=1e-5)


def test_ddim_with_eta_zero_is_deterministic_and_eta_one_is_not(ring):
    model, _ = ring
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    runs = [model.reverse(x.clone(), None, sampler="ddim", steps=20, eta=e, generator=torch.Generator().manual_seed(s)) for e, s in
            ((0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2))]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[2], runs[3])


def test_slerp_keeps_the_norm_of_equal_norm_codes():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = slerp(a, b, torch.linspace(0, 1, 7))
    assert torch.allclose(path.norm(dim=1), torch.full((7,), 3.0)) and torch.allclose(path[0], a) and torch.allclose(path[-1], b)
    assert torch.allclose(slerp(a, 2 * a, torch.tensor([0.5])), 1.5 * a.unsqueeze(0))  # parallel: the straight line


# -- classifier-free guidance ------------------------------------------------------------------------


def _perturbed(model: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def test_guidance_mixes_the_conditional_and_the_null_output():
    """out = out(null) + s (out(y) - out(null)) (Ho & Salimans 2021 with w = s - 1): s = 1 is
    the conditional model, s = 0 the null label's; the x0 estimate is affine in the output,
    so it mixes the same way (no clipping: real data)."""
    spec = DataSpec((3,), "real", num_classes=4)
    model = _perturbed(deepgen.create_model("ddpm", spec, conditional=True, hidden=(16, 16), timesteps=50, steps=10))
    x, t = torch.randn(5, 3), torch.full((5,), 20)
    y = torch.tensor([0, 1, 2, 3, 1])
    idx = model.label_index(y, 5)
    null = model.label_index(torch.full((5,), NULL_LABEL), 5)
    assert torch.equal(null, torch.full((5,), 4))
    with torch.no_grad():
        cond, _ = model.denoise(x, t, idx, guidance=1.0)
        uncond, _ = model.denoise(x, t, null, guidance=1.0)
        zero, _ = model.denoise(x, t, idx, guidance=0.0)
        three, _ = model.denoise(x, t, idx, guidance=3.0)
    assert not torch.allclose(cond, uncond, atol=1e-4)
    assert torch.allclose(zero, uncond, atol=1e-5) and torch.allclose(three, uncond + 3 * (cond - uncond), atol=1e-4)


class _Spy(nn.Module):
    """A denoiser that records the class indices it is given and predicts 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            self.seen.append(cond.clone())
        return x * self.w


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_training_drops_labels_to_the_null_label_at_rate_p_uncond(p):
    spec = DataSpec((2,), "real", num_classes=3)
    model = deepgen.create_model("ddpm", spec, conditional=True, p_uncond=p, hidden=(8,), timesteps=10, steps=5)
    model.denoiser = spy = _Spy()
    y = torch.randint(0, 3, (40_000,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model.loss(Batch(torch.randn(40_000, 2), y))
    seen = spy.seen[-1]
    dropped = seen == 3
    assert abs(float(dropped.float().mean()) - p) < 0.01
    assert torch.equal(seen[~dropped], y[~dropped])  # the others keep their labels


# -- the variational bound ---------------------------------------------------------------------------


class _Constant(nn.Module):
    """Predicts x0 = c everywhere (with prediction="x0"): the bound is then deterministic."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return (self.c + 0 * self.w).expand_as(x).to(x.dtype)


def _closed_form_bound(model, x0: torch.Tensor, c: torch.Tensor, discrete_levels: int | None) -> torch.Tensor:
    """Ho et al. eq. 5 for a network whose x0 estimate is always c, written out from the
    schedule's abar alone: the KL terms are (c0 (x0 - c))^2 / (2 var) with the posterior's
    x0 coefficient c0 and variance, since the x_t parts of the two means cancel."""
    abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - model.betas.double(), 0)])  # abar[t + 1]
    ts = list(range(0, model.config.timesteps, model.config.bound_stride))
    d = tuple(range(1, x0.dim()))
    a = abar[ts[-1] + 1]
    total = -0.5 * ((1 - a) + a * x0**2 - 1 - torch.log(1 - a)).sum(d)
    for t, s in zip(ts[1:][::-1], ts[:-1][::-1]):
        at, as_ = abar[t + 1], abar[s + 1]
        b = 1 - at / as_
        c0, var = as_.sqrt() * b / (1 - at), (1 - as_) / (1 - at) * b
        total = total - ((c0 * (x0 - c)) ** 2 / (2 * var)).sum(d)
    a1, a0 = abar[2], abar[1]
    var0 = (1 - a0) / (1 - a1) * (1 - a1 / a0)  # beta~ of step 1 -> 0
    sd = var0.sqrt()
    if discrete_levels is None:
        return total + torch.distributions.Normal(c, sd).log_prob(x0).sum(d)
    # The bin's mass from the tail the bin lies in (mirrored on the right), so that plain
    # float64 CDFs keep their digits: Phi(b) - Phi(a) = Phi(-a) - Phi(-b).
    half = 1.0 / (discrete_levels - 1)

    def cdf(z: torch.Tensor) -> torch.Tensor:  # Python's erfc, elementwise: accurate in the tails, unlike 0.5 (1 + erf)
        return torch.tensor([0.5 * math.erfc(-v / math.sqrt(2)) for v in z.flatten().tolist()], dtype=torch.float64).reshape(z.shape)

    a = torch.where(x0 < -1 + half / 2, torch.full_like(x0, -math.inf), (x0 - half - c) / sd)
    b = torch.where(x0 > 1 - half / 2, torch.full_like(x0, math.inf), (x0 + half - c) / sd)
    right = x0 > c
    mass = torch.where(right, cdf(-a) - cdf(-b), cdf(b) - cdf(a))
    return total + torch.log(mass).sum(d)


@pytest.mark.parametrize("stride", [1, 7])
@pytest.mark.parametrize("kind", ["binary", "levels", "real"])
def test_the_bound_equals_its_closed_form_for_a_constant_denoiser(kind, stride):
    torch.manual_seed(0)
    if kind == "real":
        spec, x = DataSpec((3,), "real"), torch.randn(4, 3, dtype=torch.float64)
        x0, c, levels = x, torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64), None
    elif kind == "binary":
        spec = DataSpec((1, 2, 2), "binary")
        x = torch.randint(0, 2, (4, 1, 2, 2)).double()
        x0, levels = 2 * x - 1, 2
        c = torch.tensor([0.3, -0.5, 0.9, 0.0], dtype=torch.float64).reshape(1, 2, 2)
    else:
        spec = DataSpec((1, 2, 2), "continuous", num_levels=5)
        x = torch.randint(0, 5, (4, 1, 2, 2)).double() / 4
        x0, levels = 2 * x - 1, 5
        c = torch.tensor([0.3, -0.5, 0.95, -0.99], dtype=torch.float64).reshape(1, 2, 2)
    model = deepgen.create_model("ddpm", spec, prediction="x0", timesteps=30, steps=10, bound_stride=stride, network="mlp", hidden=(4,))
    model.denoiser = _Constant(c)
    model = model.double()
    got = model.log_prob(x)
    assert torch.allclose(got, _closed_form_bound(model, x0, c, levels), rtol=1e-9, atol=1e-9)
    info = model.likelihood_info()
    assert info.kind == "bound" and info.discrete == (kind != "real") and (f"every {stride}-th" in info.note) == (stride > 1)


class _LinearInXt(nn.Module):
    """x0 estimate A(t) x_t + B(t) (prediction="x0"), A and B depending on t: the form of the
    exact denoiser of Gaussian data, with coefficients that are not its own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    @staticmethod
    def coefficients(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.double()
        return 0.5 + 0.3 * torch.cos(t / 7), 0.1 * torch.sin(t / 5) - 0.05

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.coefficients(t)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (a.reshape(shape) * x + b.reshape(shape) + 0 * self.w).to(x.dtype)


@pytest.mark.parametrize("stride", [1, 4])
def test_the_bound_matches_its_expectation_for_a_denoiser_that_reads_x_t(stride):
    """For x0_hat = A(t) x_t + B(t) every term's expectation over x_t = sqrt(abar) x0 +
    sqrt(1 - abar) eps has a closed form: x0 - x0_hat = (1 - A sqrt(abar)) x0 - B - A
    sqrt(1 - abar) eps, so E (x0 - x0_hat)^2 = ((1 - A sqrt(abar)) x0 - B)^2 + A^2 (1 - abar).
    The mean of many one-draw bounds must match it (within 5 standard errors): a wrong t in
    q_sample or given to the network, or the wrong noise scale, moves it by far more."""
    spec = DataSpec((2,), "real")
    model = deepgen.create_model("ddpm", spec, prediction="x0", timesteps=40, steps=10, bound_stride=stride, network="mlp", hidden=(4,))
    model.denoiser = _LinearInXt()
    model = model.double()
    x0 = torch.tensor([[0.8, -1.3]], dtype=torch.float64)
    n = 40_000
    draws = model.log_prob(x0.expand(n, 2), generator=torch.Generator().manual_seed(3))
    abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - model.betas.double(), 0)])  # abar[t + 1]
    ts = list(range(0, 40, stride))

    def sq_err(t: int) -> torch.Tensor:  # E (x0 - x0_hat(x_t))^2 per dimension
        a, b = _LinearInXt.coefficients(torch.tensor(float(t)))
        at = abar[t + 1]
        return ((1 - a * at.sqrt()) * x0 - b) ** 2 + a**2 * (1 - at)

    a = abar[ts[-1] + 1]
    want = -0.5 * ((1 - a) + a * x0**2 - 1 - torch.log(1 - a)).sum()
    for t, s in zip(ts[1:], ts[:-1]):
        at, as_ = abar[t + 1], abar[s + 1]
        beta = 1 - at / as_
        c0, var = as_.sqrt() * beta / (1 - at), (1 - as_) / (1 - at) * beta
        want = want - (c0**2 * sq_err(t) / (2 * var)).sum()
    var0 = (1 - abar[1]) / (1 - abar[2]) * (1 - abar[2] / abar[1])
    want = want - 0.5 * (sq_err(0) / var0 + torch.log(var0) + math.log(2 * math.pi)).sum()
    se = float(draws.std()) / math.sqrt(n)
    assert abs(float(draws.mean()) - float(want)) < 5 * se, (float(draws.mean()), float(want), se)
    assert se < 0.02 * abs(float(want))  # the check has teeth: the error bar is small against the figure


def test_the_bound_of_a_trained_model_is_a_bound_on_a_tiny_discrete_space():
    """Two binary pixels, trained on a skewed distribution: E[bound(x)] <= log p(x) for
    every x, so sum_x exp(E[bound(x)]) <= 1 (E estimated over 100 draws of x_t each);
    training makes the bound tight enough that the sum is well above 0 (0.09 measured; DDPM's
    bound with fixed variances is loose at small t, Nichol & Dhariwal 2021), and the likelier
    values get the larger bound."""
    probs = torch.tensor([0.55, 0.25, 0.15, 0.05])  # 00, 01, 10, 11
    values = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).reshape(4, 1, 1, 2)
    g = torch.Generator().manual_seed(0)
    data = values[torch.multinomial(probs, 4096, replacement=True, generator=g)]
    seed_all(0)
    model = deepgen.create_model("ddpm", DataSpec((1, 1, 2), "binary"), network="mlp", hidden=(64, 64), timesteps=100, steps=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        loss = model.loss(Batch(data[torch.randint(0, len(data), (256,), generator=g)], None)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # 100 draws of every value in one batch
        bound = model.log_prob(values.repeat(100, 1, 1, 1), generator=torch.Generator().manual_seed(1)).reshape(100, 4).mean(0)
    total = float(bound.exp().sum())
    assert 0.03 < total <= 1.0, (bound.exp(), total)
    assert bound.argmax() == 0 and bound.argmin() == 3


@pytest.mark.parametrize("levels", [2, 5, 256])
def test_the_discretized_gaussian_gives_the_levels_probabilities_summing_to_one(levels):
    x = (-1 + 2 * torch.arange(levels, dtype=torch.float64) / (levels - 1)).reshape(-1, 1)  # (L, 1): every level
    mean = torch.tensor([[-1.3, -0.2, 0.0, 0.5, 1.0, 4.0]], dtype=torch.float64)
    log_scale = torch.tensor([[-6.0, -2.0, 0.0, -4.0, -1.0, 0.5]], dtype=torch.float64)
    p = discretized_gaussian_log_prob(x, mean, log_scale, levels).exp()  # (L, 6)
    assert torch.allclose(p.sum(0), torch.ones(6, dtype=torch.float64), atol=1e-9)
    # A value far from a tight mean: finite (the tails use log_ndtr).
    far = discretized_gaussian_log_prob(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([-7.0]), 256)
    assert torch.isfinite(far).all() and float(far) < -1e5


# -- settings, training defaults, the command line ---------------------------------------------------


@pytest.mark.parametrize("settings,words", [
    ({"sampler": "euler"}, "sampler must be one of ddim, ddpm, dpm-solver++"),
    ({"steps": 2000}, "steps must be in 1..timesteps"),
    ({"sampler": "ddpm", "eta": 0.5}, "eta is DDIM's setting"),
    ({"spacing": "linspace"}, "spacing must be one of"),
    ({"spacing": "quadratic", "steps": 900}, "quadratic spacing repeats"),
    ({"guidance": -1.0}, "guidance must be a number >= 0"),
    ({"prediction": "score"}, "prediction must be one of eps, x0, v"),
    ({"schedule": "sigmoid"}, "schedule must be one of linear, cosine"),
    ({"bound_stride": 1000}, "bound_stride must be in"),
    ({"p_uncond": 1.0}, "p_uncond must be in"),
])
def test_a_wrong_setting_is_one_clear_error(settings, words):
    with pytest.raises(UserError, match=words):
        deepgen.create_model("ddpm", DataSpec((2,), "real"), **settings)


def test_the_unet_refuses_data_it_cannot_take():
    with pytest.raises(UserError, match="network=unet needs images"):
        deepgen.create_model("ddpm", DataSpec((2,), "real"), network="unet")
    with pytest.raises(UserError, match="U-Net"):  # 28 does not halve three times
        deepgen.create_model("ddpm", DataSpec((1, 28, 28), "continuous", num_levels=256), channel_mult=(1, 2, 2, 2), channels=8)


def test_a_ddpm_trains_with_an_ema_unless_told_otherwise(tmp_path: Path) -> None:
    ds = deepgen.load_dataset("moons")
    model = deepgen.create_model("ddpm", ds, hidden=(8,), timesteps=10, steps=5)
    assert Trainer(model, ds).config.ema == 0.9999
    # A config of the user's own keeps the model's EMA unless it says otherwise.
    given = Trainer(model, ds, TrainConfig(epochs=3, progress=False)).config
    assert (given.ema, given.ema_warmup, given.epochs) == (0.9999, 0.75, 3)
    for off in (TrainConfig(ema=0.0, ema_warmup=0.0), TrainConfig(ema=0.0)):  # no EMA: no warm-up either
        resolved = Trainer(model, ds, off).config
        assert (resolved.ema, resolved.ema_warmup) == (0.0, 0.0)
    assert Trainer(deepgen.create_model("vae", ds), ds, TrainConfig()).config.ema == 0.0  # no default: off
    run = tmp_path / "run"
    args = ["train", "ddpm", "--data", "moons", "--epochs", "1", "--set", "hidden=8", "--set", "timesteps=10", "--set", "steps=4",
            "--set", "max_train=128", "--set", "progress=false", "--set", "tensorboard=false", "--out"]
    assert main([*args, str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["ema"] == 0.9999 and cfg["train"]["ema_warmup"] == 0.75
    assert main([*args, str(tmp_path / "plain"), "--set", "ema=0", "--set", "ema_warmup=0"]) == 0
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train"]["ema"] == 0.0
    assert main([*args, str(tmp_path / "off"), "--set", "ema=0"]) == 0  # ema=0 alone: no EMA, and no warm-up of one
    off = json.loads((tmp_path / "off" / "config.json").read_text())["train"]
    assert (off["ema"], off["ema_warmup"]) == (0.0, 0.0)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--set", "ema=0"]) == 0  # and on a resume


def test_cli_samples_with_another_sampler_and_evaluates_the_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "ddpm", "--data", "digits", "--epochs", "1", "--set", "channels=8", "--set", "channel_mult=1,2",
                 "--set", "res_blocks=1", "--set", "heads=2", "--set", "timesteps=20", "--set", "steps=5", "--set", "max_train=64",
                 "--set", "conditional=true", "--set", "progress=false", "--set", "tensorboard=false", "--out", str(run)]) == 0
    for picture in ("samples.png", "samplers.png", "guidance.png"):
        assert (run / picture).is_file(), picture
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "--n", "6", "--out", str(out), "--cond", "3", "--set", "sampler=dpm-solver++", "--set", "steps=3",
                 "--set", "guidance=2"]) == 0
    import numpy as np

    arr = np.load(out)
    assert arr.shape == (6, 1, 8, 8) and arr.min() >= 0 and arr.max() <= 16  # digits: 17 levels
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "nll", "--limit", "8", "--device", "cpu", "--set", "bound_stride=5"]) == 0
    entry = json.loads((run / "eval.json").read_text())["nll"]["test"]
    assert math.isfinite(entry["values"]["nll_bpd"]) and "every 5-th timestep" in entry["values"]["nll_note"]
    assert main(["sample", str(run), "--n", "2", "--out", str(out), "--set", "sampler=ddpm", "--set", "eta=0.3"]) == 2
    assert "eta is DDIM's setting" in capsys.readouterr().err
    # The process and the parameterisation define the trained network (no parameter shape
    # changes with them): a loaded run refuses them instead of sampling another model.
    for change in ("timesteps=4", "prediction=v", "schedule=cosine", "heads=1"):  # timesteps=4 < the saved steps=5
        assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "no.npy"), "--set", change]) == 2, change
        err = capsys.readouterr().err
        assert f"cannot change {change.split('=')[0]}=" in err and "sampler" in err and "Traceback" not in err, err
    assert not (tmp_path / "no.npy").exists()


# -- found in review: the cosine schedule's end, dtypes, modes, pictures ------------------------------


def _gaussian_denoiser(sched, m: float, s: float, bias: float):
    """The exact (x0, eps) of data N(m, s^2), with ``bias`` added to eps (a slightly wrong network)."""
    def estimates(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = sched.alpha_bar(t, x)
        x0 = m + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x - a.sqrt() * m)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt() + bias
        return (x - (1 - a).sqrt() * eps) / a.sqrt(), eps
    return estimates


@pytest.mark.parametrize("name", ["ddim", "dpm-solver++", "ddpm"])
def test_samplers_start_where_an_eps_network_is_usable_on_the_cosine_schedule(name):
    """The cosine schedule ends at abar ~ 2e-9, where an eps network's x0 estimate multiplies
    its error by 1 / sqrt(abar) ~ 2e4: a sampler starting there scatters samples (a 1% eps
    error sent DPM-Solver++ samples of N(0.7, 0.3^2) to |x| of tens). Samplers start at
    lambda >= -5.1 (diffusers' lambda_min_clipped); the linear schedule keeps T - 1."""
    from deepgen.samplers import NoiseSchedule, make_sampler

    linear, cosine = NoiseSchedule.make("linear", 1000), NoiseSchedule.make("cosine", 1000)
    assert int(make_sampler("dpm-solver++", linear, 20).timesteps[0]) == 999
    smp = make_sampler(name, cosine, 20)
    assert float(cosine.alpha_bar(smp.timesteps[0])) >= 3e-5 and int(smp.timesteps[0]) < 999
    estimates = _gaussian_denoiser(cosine, 0.7, 0.3, bias=0.01)
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for i, t in enumerate(smp.timesteps):
        x0, eps = estimates(x, t.expand(len(x)))
        x = smp.step(i, x, x0, eps, gen)
    assert abs(float(x.mean()) - 0.7) < 0.15 and float(x.std()) < 0.6 and float(x.abs().max()) < 3


def test_conversions_keep_the_schedule_in_float64_and_timesteps_exact():
    spec = DataSpec((1, 8, 8), "continuous", num_levels=256)
    model = deepgen.create_model("ddpm", spec, channels=8, channel_mult=(1, 2), res_blocks=1, heads=2, timesteps=1000, steps=5)
    for convert in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.float(), lambda m: m.double()):
        convert(model)
        assert model.abar.dtype == model.betas.dtype == torch.float64 and float(1 - model.abar[1]) == pytest.approx(1e-4)
        assert model.denoiser.time_embed.freqs.dtype in (torch.float32, torch.float64)
    model.to(torch.bfloat16)
    from deepgen.nn.unet import _sinusoid

    emb = _sinusoid(torch.tensor([998.0, 999.0]), model.denoiser.time_embed.freqs, 8)
    assert not torch.equal(emb[0], emb[1])  # bf16 would put 998 and 999 on one embedding
    x = (torch.randint(0, 256, (2, 1, 8, 8)) / 255.0)
    model.config = model.config.replace(bound_stride=100)
    assert torch.isfinite(model.log_prob(x)).all()


def test_a_failed_call_leaves_the_model_in_training_mode():
    spec = DataSpec((2,), "real", num_classes=3)
    model = deepgen.create_model("ddpm", spec, conditional=True, hidden=(8,), timesteps=10, steps=5).train()
    for call in (lambda: model.sample(2, cond=7), lambda: model.log_prob(torch.zeros(2, 2), cond=torch.tensor([0, 9])),
                 lambda: model.encode(torch.zeros(2, 2), cond=torch.tensor([5, 5]))):
        with pytest.raises(UserError, match="labels must be in"):
            call()
        assert model.training
    model.sample(2, cond=1)
    assert model.training


def test_guidance_and_eta_out_of_range_are_refused():
    with pytest.raises(UserError, match="needs a model trained with conditional=true"):
        deepgen.create_model("ddpm", DataSpec((2,), "real"), guidance=3.0)
    with pytest.raises(UserError, match=r"eta must be in \[0, 1\]"):
        deepgen.create_model("ddpm", DataSpec((2,), "real"), eta=1.5)


def test_the_pictures_of_a_run_with_quadratic_spacing(tmp_path: Path):
    """samplers.png overrides the sampler and steps; each row takes its sampler's own
    spacing, so a run trained with spacing=quadratic (which 10 of 20 steps cannot use) still
    gets its pictures."""
    from deepgen.analysis import write_analysis

    ds = deepgen.load_dataset("digits")
    model = deepgen.create_model("ddpm", ds, channels=8, channel_mult=(1, 2), res_blocks=1, heads=2, timesteps=20, steps=4, spacing="quadratic")
    files = {p.name for p in write_analysis(tmp_path, model, ds, device="cpu", seed=0)}
    assert {"samples.png", "samplers.png"} <= files
