"""Review s18 of ddpm and its samplers: defects found on cases no other test names
(tabular data with no examples, ...). Tiny networks, closed-form checks, fast on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepgen
from deepgen.data.dataset import DataSpec
from deepgen.samplers import NoiseSchedule, make_sampler, usable_timesteps


@pytest.mark.parametrize("shape", [(2,), (3, 4)])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_tabular_data_samples_scores_and_encodes_no_examples(shape, sampler):
    """The contract's empty batch on the MLP denoiser (tables, vectors): its flattening was
    x.reshape(0, -1), which torch refuses as ambiguous, so sample(0) raised a RuntimeError
    on real data while images (the U-Net) returned (0, *shape)."""
    spec = DataSpec(shape, "real", num_classes=3)
    model = deepgen.create_model("ddpm", spec, conditional=True, hidden=(8,), timesteps=20, steps=3, sampler=sampler)
    none = torch.zeros(0, dtype=torch.long)
    assert model.sample(0).shape == (0, *shape)
    assert model.sample(0, cond=none).shape == (0, *shape)
    assert model.log_prob(torch.zeros(0, *shape), cond=none).shape == (0,)
    assert model.decode(model.encode(torch.zeros(0, *shape))).shape == (0, *shape)


class _Gaussian(nn.Module):
    """E[x_0 | x_t] of data N(0, s^2) per value, as an eps prediction (float64 inside, the
    caller's dtype out): sqrt(abar) s^2 / (abar s^2 + 1 - abar) x_t."""

    def __init__(self, abar: torch.Tensor, s: float = 0.5) -> None:
        super().__init__()
        self.abar, self.s = abar.double().clone(), s
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        a = self.abar[t.long() + 1].reshape(-1, *([1] * (x.dim() - 1)))
        xd = x.double()
        x0 = a.sqrt() * self.s**2 / (a * self.s**2 + 1 - a) * xd
        return ((xd - a.sqrt() * x0) / (1 - a).sqrt() + 0 * self.w).to(x.dtype)


def _gaussian_model(dtype: torch.dtype = torch.float64, **settings) -> deepgen.GenerativeModel:
    model = deepgen.create_model("ddpm", DataSpec((4,), "real"), network="mlp", hidden=(4,), **settings)
    model.denoiser = _Gaussian(model.abar)
    return model.to(dtype)


def test_ddim_codes_of_a_bf16_model_keep_the_schedule_in_float64():
    """encode / decode of a bf16 model at many steps follow the float64 ODE to bf16's own
    rounding: their coefficients sqrt(abar), sqrt(1 - abar) were taken from abar cast to
    bf16 first, where abar_t > 0.998 is 1 (1 - abar = 0 over the first timesteps), so at
    1000 steps decoding drifted 8x farther from the float64 decode than bf16 arithmetic does
    (mean 0.145 against 0.017; encoding 0.29 against 0.035)."""
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _gaussian_model(timesteps=1000, steps=1000)
    low = _gaussian_model(torch.bfloat16, timesteps=1000, steps=1000)
    assert low.abar.dtype == torch.float64
    back = ref.decode(z)
    assert float((low.decode(z).double() - back).abs().mean()) < 0.05
    x = back[:64]
    assert float((low.encode(x).double() - ref.encode(x)).abs().mean()) < 0.1


class _NoFloat64(torch.Tensor):
    """A tensor that refuses conversion to float64, as one on Apple's MPS does."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.double or (func is torch.Tensor.to and torch.float64 in (*args[1:], *kwargs.values())):
            raise RuntimeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")
        return super().__torch_function__(func, types, args, kwargs)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm-solver++"])
def test_samplers_build_and_step_on_float32_tables_that_refuse_float64(kind, name):
    """On MPS the model keeps its tables in float32 (NoiseSchedule.to, DDPM._apply) and the
    device has no float64: usable_timesteps converted the tables with .double(), so no sampler
    could be built there. Its count in float32 is the float64 one (996 of the cosine's 1000)."""
    ref = NoiseSchedule.make(kind, 1000)
    sched = NoiseSchedule.from_tables(ref.betas.float().as_subclass(_NoFloat64), ref.abar.float().as_subclass(_NoFloat64))
    assert usable_timesteps(sched) == usable_timesteps(ref) == (1000 if kind == "linear" else 996)
    smp = make_sampler(name, sched, 4)
    x = torch.randn(3, 2)
    for i in range(len(smp)):
        x = smp.step(i, x, 0.5 * x, x, torch.Generator().manual_seed(i)).as_subclass(torch.Tensor)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("convert", ["half", "bfloat16", "float", "double"])
def test_a_dtype_conversion_keeps_the_tables_on_the_models_device(convert):
    """model.cuda().bfloat16(): the schedule's tables are rebuilt in float64 after any
    conversion, on the device the conversion sends tensors to, which was probed with a CPU
    tensor, so a dtype-only conversion of a model off the CPU put them back on the CPU, away
    from the parameters. The meta device stands in for CUDA here (no GPU on CI)."""
    model = deepgen.create_model("ddpm", DataSpec((2,), "real"), hidden=(4,), timesteps=20, steps=5).to("meta")
    model = getattr(model, convert)()
    assert next(model.parameters()).device.type == "meta"
    assert model.abar.device.type == model.betas.device.type == "meta"
    assert model.abar.dtype == model.betas.dtype == torch.float64


@pytest.mark.parametrize("eta", [0.3, 0.7])
@pytest.mark.parametrize("kind,steps", [("linear", 7), ("cosine", 13)])
def test_a_ddim_step_at_eta_between_0_and_1_is_diffusers_formula(eta, kind, steps):
    """Song et al. eq. 12 with sigma from eq. 16, written as diffusers' DDIMScheduler.step
    does: std = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)), x_prev = sqrt(a_prev)
    x0 + sqrt(1 - a_prev - std^2) eps + std z. Only eta = 0 and 1 were checked elsewhere,
    where eta, eta^2 and sqrt(eta) scale sigma alike; steps that do not divide T."""
    sched = NoiseSchedule.make(kind, 1000)
    smp = make_sampler("ddim", sched, steps, eta=eta)
    g = torch.Generator().manual_seed(0)
    x, x0, eps = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    for i in range(len(smp) - 1):
        a_t, a_prev = (float(sched.abar[int(t) + 1]) for t in (smp.timesteps[i], smp.prev[i]))
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        want = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps + std * z
        got = smp.step(i, x, x0, eps, torch.Generator().manual_seed(i))
        assert torch.allclose(got, want, rtol=0, atol=1e-12), i
