"""ddpm on the cases a diffusers user reaches first and no other test names: odd and RGB
image sizes, every sampler at 1, 2 and T steps, the x0 estimate under each parameterisation,
guidance at 0, 1 and > 1, DDIM codes on the cosine schedule, a hand-computed bound, data off
its levels, seeds, and the command line's refusals.

The denoisers here are closed forms (the posterior mean of a two-mode mixture), so the
checks are on values, not on a training run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deepgen
from deepgen.cli import main
from deepgen.data.dataset import DataSpec
from deepgen.errors import UserError
from deepgen.samplers import make_sampler
from deepgen.training import TrainConfig, Trainer

SMALL_UNET = {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "heads": 2, "attention": (1,), "timesteps": 20, "steps": 4}


class _Mixture(nn.Module):
    """E[x_0 | x_t] of the data 0.5 N(-1, s^2) + 0.5 N(1, s^2) per value (prediction="x0"),
    in float64; ``as_`` another prediction (eps or v) of the same estimate; ``eps_error`` a
    t-dependent error added to the eps it implies (what a trained eps network has)."""

    def __init__(self, abar: torch.Tensor, as_: str = "x0", eps_error: float = 0.0, s: float = 0.1) -> None:
        super().__init__()
        self.abar, self.as_, self.eps_error, self.s = abar.double(), as_, eps_error, s
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        a = self.abar[t.long() + 1].reshape(-1, *([1] * (x.dim() - 1)))
        xd, ra, var = x.double(), a.sqrt(), a * self.s**2 + 1 - a
        logw = torch.stack([-(xd - ra * m) ** 2 / (2 * var) for m in (-1.0, 1.0)])
        means = torch.stack([m + ra * self.s**2 / var * (xd - ra * m) for m in (-1.0, 1.0)])
        x0 = (torch.softmax(logw, 0) * means).sum(0)
        eps = (xd - ra * x0) / (1 - a).sqrt() + self.eps_error * torch.cos(t.double() / 3).reshape(a.shape)
        x0 = (xd - (1 - a).sqrt() * eps) / ra
        out = {"x0": x0, "eps": eps, "v": ra * eps - (1 - a).sqrt() * x0}[self.as_]
        return (out + 0 * self.w).to(x.dtype)


def _mixture_model(prediction: str = "x0", eps_error: float = 0.0, **settings) -> deepgen.GenerativeModel:
    model = deepgen.create_model("ddpm", DataSpec((2,), "real"), prediction=prediction, network="mlp", hidden=(4,), **settings)
    model.denoiser = _Mixture(model.abar, prediction, eps_error)
    return model.double()


def _mixture_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n, 2), generator=g).double() * 2 - 1) + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)


# -- images of any size ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 6, 10), (1, 12, 4)])
def test_rgb_and_non_square_images_sample_and_score(shape):
    spec = DataSpec(shape, "continuous", num_levels=256)
    model = deepgen.create_model("ddpm", spec, **SMALL_UNET)
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, *shape) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, (x * 255).round() / 255)  # on the 256 levels
    assert torch.isfinite(model.log_prob(x, generator=torch.Generator().manual_seed(1))).all()


def test_an_image_size_the_unet_cannot_halve_is_one_error_naming_what_fits():
    """28 x 28 halves twice (28, 14, 7), not three times: the error names the divisor and a
    channel_mult that fits; where the fitting U-Net has fewer levels than the attention
    setting names, the suggestion says to drop those too (before: it suggested a setting
    the next run refused)."""
    spec = DataSpec((3, 28, 28), "continuous", num_levels=256)
    with pytest.raises(UserError, match=r"divisible by 2\*\*\(len\(channel_mult\) - 1\) = 8.*channel_mult=\(1, 2, 2\), or pad"):
        deepgen.create_model("ddpm", spec, channels=8, channel_mult=(1, 2, 2, 2), heads=2)
    odd = DataSpec((1, 7, 7), "continuous", num_levels=256)
    with pytest.raises(UserError, match=r"channel_mult=\(1,\) and attention=\(\)") as e:
        deepgen.create_model("ddpm", odd, channels=8, channel_mult=(1, 2), heads=2)
    assert "Traceback" not in str(e.value)
    model = deepgen.create_model("ddpm", odd, channels=8, channel_mult=(1,), attention=(), heads=2, timesteps=10, steps=2)
    assert model.sample(2).shape == (2, 1, 7, 7)  # the suggestion works


# -- every sampler at every step count ----------------------------------------------------------------


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpm-solver++", 0.0)])
@pytest.mark.parametrize("shape", [(2,), (3, 4)])
def test_every_sampler_runs_at_1_2_and_T_steps_and_refuses_T_plus_1(sampler, eta, shape):
    model = deepgen.create_model("ddpm", DataSpec(shape, "real"), hidden=(8,), timesteps=12, steps=2, sampler=sampler, eta=eta)
    for steps in (1, 2, 12):
        model.config = model.config.replace(steps=steps)
        x = model.sample(3, generator=torch.Generator().manual_seed(0))
        assert x.shape == (3, *shape) and torch.isfinite(x).all()
    for steps in (13, 0, -1):
        with pytest.raises(UserError, match=r"steps must be in 1\.\.timesteps \(12\)"):
            model.config.replace(steps=steps)
    with pytest.raises(UserError, match=r"got 50 \(the sampling steps' default: .* set steps too, e.g. steps=6\)"):
        deepgen.create_model("ddpm", DataSpec(shape, "real"), hidden=(8,), timesteps=12)  # steps left at its 50



def test_reverse_checks_its_overrides_as_the_settings_are():
    """reverse(sampler=, steps=, eta=) is the configured sampler with those settings: the
    same numbers as a config that says so, and the settings' own errors (steps=0 was read as
    'not given' and ran the config's steps)."""
    model = _mixture_model("x0", timesteps=20, steps=5, eta=1.0)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = model.reverse(x, None, sampler="ddim", steps=3, eta=0.0)
    model.config = model.config.replace(steps=3, eta=0.0)
    assert torch.equal(got, model.reverse(x, None))
    model.config = model.config.replace(eta=1.0)
    assert model.reverse(x, None, sampler="dpm-solver++").shape == (16, 2)  # DDIM's eta is not dpm-solver++'s: not refused
    for kw, words in (({"steps": 0}, r"steps must be in 1\.\.timesteps \(20\), got 0"), ({"steps": 21}, "got 21"),
                      ({"sampler": "euler"}, "unknown sampler 'euler'"), ({"sampler": "ddpm", "eta": 0.5}, "eta is DDIM's setting")):
        with pytest.raises(UserError, match=words):
            model.reverse(x, None, **kw)

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpm-solver++", 0.0)])
def test_the_parameterisations_of_one_denoiser_sample_the_same(schedule, sampler, eta):
    """eps, x0 and v predictions of the same x0 estimate are one model: every sampler's
    samples agree to float precision (a wrong conversion in split, or an eps recomputed
    at another t, moves them by far more), at 1, 2 and T steps."""
    for steps in (1, 2, 20):
        got = {}
        for prediction in ("eps", "x0", "v"):
            model = _mixture_model(prediction, timesteps=20, steps=steps, schedule=schedule, sampler=sampler, eta=eta)
            got[prediction] = model.sample(64, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(got["eps"], got["x0"], atol=1e-8) and torch.allclose(got["v"], got["x0"], atol=1e-8), (steps,)
    assert 0.85 < float(got["x0"].abs().mean()) < 1.15  # T steps of the exact denoiser: on the modes at +-1


def test_sampling_is_reproducible_from_the_generator_alone():
    spec = DataSpec((1, 4, 4), "binary")
    model = deepgen.create_model("ddpm", spec, **{**SMALL_UNET, "attention": ()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    for sampler, eta in (("ddpm", 0.0), ("ddim", 1.0), ("dpm-solver++", 0.0)):
        model.config = model.config.replace(sampler=sampler, eta=eta)
        a = model.sample(6, generator=torch.Generator().manual_seed(5))
        torch.manual_seed(123)  # the global generator plays no part
        b = model.sample(6, generator=torch.Generator().manual_seed(5))
        c = model.sample(6, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c), sampler


# -- classifier-free guidance -------------------------------------------------------------------------


def test_guidance_zero_one_and_more_and_no_labels():
    """Scale 0 samples the unconditional model, exactly what no labels (or -1) give; 1 the
    conditional one; 3 differs from both. A model without label dropout refuses all three
    ways to the unconditional model."""
    spec = DataSpec((3,), "real", num_classes=4)
    model = deepgen.create_model("ddpm", spec, conditional=True, hidden=(16, 16), timesteps=20, steps=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))

    def draw(guidance: float, cond) -> torch.Tensor:
        model.config = model.config.replace(guidance=guidance)
        return model.sample(8, cond=cond, generator=torch.Generator().manual_seed(1))

    zero, one, three = draw(0.0, 2), draw(1.0, 2), draw(3.0, 2)
    assert torch.allclose(zero, draw(1.0, None), atol=1e-6) and torch.allclose(zero, draw(1.0, -1), atol=1e-6)
    assert torch.allclose(zero, draw(3.0, None), atol=1e-6)  # no labels: nothing to guide towards
    assert not torch.allclose(one, zero, atol=1e-3) and not torch.allclose(three, one, atol=1e-3)
    plain = deepgen.create_model("ddpm", spec, conditional=True, p_uncond=0.0, hidden=(16, 16), timesteps=20, steps=5)
    with pytest.raises(UserError, match="pass labels"):
        plain.sample(2)
    with pytest.raises(UserError, match="labels must be in 0..3"):
        plain.sample(2, cond=-1)
    with pytest.raises(UserError, match=r"label dropout \(p_uncond > 0\)"):
        plain.config.replace(guidance=0.0)
    with pytest.raises(UserError, match="needs a model trained with conditional=true"):
        deepgen.create_model("ddpm", DataSpec((3,), "real"), hidden=(8,), timesteps=20, steps=5, guidance=2.0)


# -- DDIM codes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_codes_round_trip_on_both_schedules(schedule):
    """encode -> decode at eta 0 for an eps network with a small t-dependent error (1%).
    The codes run over the DDIM sampler's timesteps, below the noise clip: on the cosine
    schedule, codes at T - 1 (abar ~ 2e-9) multiplied that error by 1 / sqrt(abar) on the
    way back (round trip 2.6 off, points thrown past the data; now 0.06, as the linear)."""
    model = _mixture_model("eps", eps_error=0.01, timesteps=1000, steps=10, schedule=schedule)
    assert torch.equal(model._code_timesteps(), make_sampler("ddim", model.schedule, 10, spacing="uniform").timesteps)
    x = _mixture_data(200)
    z = model.encode(x)
    back = model.decode(z)
    assert 0.6 < float(z.std()) < 1.2 and float((back - x).abs().mean()) < 0.1
    fresh = model.decode(torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert float(fresh.abs().max()) < 1.5 and float((fresh.abs() - 1).abs().mean()) < 0.15  # on the modes at +-1


def test_ddim_codes_round_trip_closely_with_many_steps():
    model = _mixture_model("x0", timesteps=200, steps=200)
    x = _mixture_data(100)
    assert float((model.decode(model.encode(x)) - x).abs().mean()) < 0.01


# -- the variational bound ----------------------------------------------------------------------------


class _EpsLinear(nn.Module):
    """eps_hat = 0.7 x_t + 0.01 t (prediction="eps")."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.w * x + 0.01 * t.double().reshape(-1, *([1] * (x.dim() - 1)))


def _bound_by_hand(x0: list[float], T: int, noise: list[list[float]], levels: int | None) -> float:
    """Ho et al. eq. 5 with T = 3, written out in Python floats: the prior KL, the two
    posterior KLs at the given noise draws (t = T-1 .. 1, then t = 0), the decoder at t = 0."""
    betas = [min((1e-4 + (0.02 - 1e-4) * i / (T - 1)) * 1000 / T, 0.999) for i in range(T)]  # Ho et al.'s, rescaled to T, clipped
    abar = [math.prod(1 - b for b in betas[: t + 1]) for t in range(T)]

    def a(t: int) -> float:
        return 1.0 if t < 0 else abar[t]

    def x0_hat(xt: float, t: int) -> float:
        return (xt - math.sqrt(1 - a(t)) * (0.7 * xt + 0.01 * t)) / math.sqrt(a(t))

    def posterior(x: float, xt: float, t: int, s: int) -> tuple[float, float]:
        b = 1 - a(t) / a(s)
        return math.sqrt(a(s)) * b / (1 - a(t)) * x + math.sqrt(a(t) / a(s)) * (1 - a(s)) / (1 - a(t)) * xt, (1 - a(s)) / (1 - a(t)) * b

    last = a(T - 1)
    total = sum(-0.5 * ((1 - last) + last * v * v - 1 - math.log(1 - last)) for v in x0)
    for j, t in enumerate(range(T - 1, 0, -1)):
        for v, e in zip(x0, noise[j]):
            xt = math.sqrt(a(t)) * v + math.sqrt(1 - a(t)) * e
            mean, var = posterior(v, xt, t, t - 1)
            total -= (mean - posterior(x0_hat(xt, t), xt, t, t - 1)[0]) ** 2 / (2 * var)
    var0 = posterior(0.0, 0.0, 1, 0)[1]
    sd = math.sqrt(var0)
    for v, e in zip(x0, noise[-1]):
        mu = x0_hat(math.sqrt(a(0)) * v + math.sqrt(1 - a(0)) * e, 0)
        if levels is None:
            total += -0.5 * ((v - mu) ** 2 / var0 + math.log(2 * math.pi * var0))
        else:
            def cdf(z: float) -> float:
                return 0.5 * math.erfc(-z / math.sqrt(2))
            half = 1 / (levels - 1)
            high = 1.0 if v > 1 - half / 2 else cdf((v + half - mu) / sd)
            low = 0.0 if v < -1 + half / 2 else cdf((v - half - mu) / sd)
            total += math.log(high - low)
    return total


@pytest.mark.parametrize("kind", ["real", "levels"])
def test_the_bound_on_three_timesteps_equals_a_hand_computation(kind):
    if kind == "real":
        spec, x, x0, levels = DataSpec((2,), "real"), torch.tensor([[0.3, -1.2]], dtype=torch.float64), [0.3, -1.2], None
    else:  # 4 levels: 0 and 2 of 0..3, i.e. -1 and 1/3 in [-1, 1]
        spec, x, x0, levels = DataSpec((1, 1, 2), "continuous", num_levels=4), torch.tensor([[[[0.0, 2 / 3]]]], dtype=torch.float64), [-1.0, 1 / 3], 4
    model = deepgen.create_model("ddpm", spec, timesteps=3, steps=2, network="mlp", hidden=(4,)).double()
    model.denoiser = _EpsLinear()
    got = float(model.log_prob(x, generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(0)  # the bound's draws, in its order: t = 2, 1, then 0
    noise = [torch.randn(x.shape, generator=g, dtype=torch.float64).flatten().tolist() for _ in range(3)]
    want = _bound_by_hand(x0, 3, noise, levels)
    assert math.isfinite(got) and abs(got - want) < 1e-9 * abs(want), (got, want)


@pytest.mark.parametrize("spec,bad,words", [
    (DataSpec((1, 2, 2), "binary"), 0.3, r"2 levels \(0 and 1\)"),
    (DataSpec((1, 2, 2), "continuous", num_levels=256), 0.5, r"256 levels \(k / 255"),
    (DataSpec((1, 2, 2), "continuous", num_levels=256), 1.5, r"256 levels"),
    (DataSpec((1, 2, 2), "discrete", num_levels=17), 2.5, r"levels 0..16, whole numbers"),  # check_data's, before the bound's
])
def test_the_bound_refuses_data_off_its_levels(spec, bad, words):
    """The bound of discrete data is a probability of its levels: a binary pixel given as a
    probability, a dequantized or resized 8-bit image is refused (before: scored as a bin
    centred on the value, a figure that bounds nothing). On the levels it is finite."""
    model = deepgen.create_model("ddpm", spec, network="mlp", hidden=(4,), timesteps=10, steps=2).eval()
    top = 16 if spec.kind == "discrete" else 1
    x = torch.tensor([0.0, top, 0.0, top]).reshape(1, 1, 2, 2)
    assert torch.isfinite(model.log_prob(x)).all()
    if spec.num_levels == 256:
        assert torch.isfinite(model.log_prob(torch.randint(0, 256, (4, 1, 2, 2)).float() / 255)).all()
    x[0, 0, 1, 0] = bad
    with pytest.raises(UserError, match=words):
        model.log_prob(x)
    model.train()  # training mode (no host reads): not checked
    assert model.log_prob(x).shape == (1,)



def test_a_bf16_models_samples_are_scored_at_their_levels():
    """bfloat16 cannot hold k / 255 (it rounds by up to half a level): a bf16 model's samples
    are scored on the levels they stand for, the same bound as their float32 values gives
    (before: bins centred up to half a level off the levels; then refused as off them)."""
    spec = DataSpec((1, 4, 4), "continuous", num_levels=256)
    model = deepgen.create_model("ddpm", spec, **{**SMALL_UNET, "attention": ()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    model.eval()
    half = deepgen.create_model("ddpm", spec, **{**SMALL_UNET, "attention": ()})
    half.load_state_dict(model.state_dict())
    x = half.bfloat16().eval().sample(32, generator=torch.Generator().manual_seed(1))
    # The samples come back in float32 on the data's own values k / 255 (bf16 cannot hold them).
    assert x.dtype == torch.float32 and torch.equal(x, torch.arange(256).float().div(255)[(x * 255).round().long()])
    x = x.bfloat16()  # and a bf16 copy of them (bins up to half a level off) still scores at its levels
    assert float(((x.double() * 255) - (x.double() * 255).round()).abs().max()) > 0.1
    levels = (x.float() * 255).round() / 255
    got = model.log_prob(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got, model.log_prob(levels, generator=torch.Generator().manual_seed(2))) and torch.isfinite(got).all()

# -- the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddpm") / "run"
    ds = deepgen.load_dataset("digits")
    model = deepgen.create_model("ddpm", ds, **SMALL_UNET)
    Trainer(model, ds, TrainConfig(epochs=1, max_steps=2, batch_size=16, progress=False, tensorboard=False, val_limit=16), folder).fit()
    return folder


def test_cli_samples_with_ddim_at_10_steps_and_evaluates(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "--n", "3", "--out", str(out), "--set", "sampler=ddim", "--set", "steps=10"]) == 0
    arr = np.load(out)
    assert arr.shape == (3, 1, 8, 8) and arr.min() >= 0 and arr.max() <= 1 and np.allclose(arr * 16, (arr * 16).round())  # 17 levels
    assert main(["eval", str(run), "--metrics", "nll", "--limit", "4", "--device", "cpu", "--set", "bound_stride=5", "--quiet"]) == 0
    assert "nll (bits/dim)" in capsys.readouterr().out


@pytest.mark.parametrize("setting,words", [
    ("sampler=euler", "sampler must be one of ddim, ddpm, dpm-solver++, got 'euler'"),
    ("steps=-3", "steps must be in 1..timesteps (20), got -3"),
    ("steps=21", "steps must be in 1..timesteps (20), got 21"),
    ("guidance=2", "needs a model trained with conditional=true"),
    ("spacing=leading", "spacing must be one of auto, uniform, quadratic, trailing"),
])
def test_cli_refuses_bad_sampling_settings_with_status_2(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         setting: str, words: str):
    out = tmp_path / "no.npy"
    assert main(["sample", str(run), "--n", "2", "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.count("error") == 1 and "Traceback" not in err
    assert words in err, err
    assert not out.exists()
