"""The VAE family's IWAE training, two stochastic layers and IAF posterior, checked against
the maths of the papers on tiny problems with random, non-trivial weights (float64):

* the IWAE objective with k = 1 is the Monte Carlo ELBO of the same noise (Burda et al. 2016);
* DReG's encoder gradient has the plain IWAE gradient's expectation and a lower variance,
  its decoder gradient is the plain one (Tucker et al. 2019), and a biased variant (STL) is
  caught by the same test, so it has power;
* the IWAE bound rises with k and stays below log p(x), computed by quadrature, for one
  layer, two layers and an IAF posterior;
* an IAF step's log-determinant is autograd's, its Jacobian is triangular in its order,
  and the whole q(z | x) integrates to one (Kingma et al. 2016);
* the two-layer model's shapes and the settings' errors.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import fit_one_phase
from test_vae import exact_log_px

from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models.vae import (
    _IAF_GATE_BIAS,
    IAF,
    VAE,
    IAFStep,
    VAEConfig,
    _DReGWeights,
    log_normal_std,
)
from deepgen.nn.masked import MADE

D = 5
SPEC = DataSpec(shape=(D,), kind="binary")
SUPPORT = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), dtype=torch.float64)  # (32, D)
TWO_LAYERS = {"stochastic_layers": 2, "latent_dim2": 1, "hidden2": (8,)}
IAF_POSTERIOR = {"posterior": "iaf", "iaf_steps": 2, "iaf_hidden": (8,), "iaf_context": 3}


def tiny_vae(spec: DataSpec = SPEC, scale: float = 0.3, seed: int = 0, **settings) -> VAE:
    """A float64 VAE whose every parameter is perturbed (non-trivial weights)."""
    torch.manual_seed(seed)
    model = VAE(VAEConfig(**{"hidden": (16,), "latent_dim": 1, **settings}), spec).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def trapezoid(lo: float, hi: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (n,) and log trapezoid weights (n,) on [lo, hi], float64."""
    z = torch.linspace(lo, hi, n, dtype=torch.float64)
    w = torch.full((n,), (hi - lo) / (n - 1), dtype=torch.float64)
    w[0] = w[-1] = w[0] / 2
    return z, torch.log(w)


def log_px_given(model: VAE, z1: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """log p(x | z1) for every x in xs (M, D) and every code z1 (G, L): (M, G)."""
    params = model.decoder(z1)  # (G, 1, D)
    return torch.stack([-model.head.nll(params, x.expand(len(z1), -1)) for x in xs])


@torch.no_grad()
def exact_log_px_two_layers(model: VAE, xs: torch.Tensor, n: int = 801) -> torch.Tensor:
    """log p(x) = log int int p(x | z1) p(z1 | z2) N(z2; 0, 1) dz1 dz2 on an n x n trapezoid
    grid, for 1-d z1 and z2: (M,)."""
    z, log_w = trapezoid(-10.0, 10.0, n)
    mu, logvar = model.decoder2(z[:, None]).chunk(2, dim=-1)  # p(z1 | z2 = z_h): (n, 1) each
    log_p_z1 = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z[None, :])  # (h, g)
    log_joint_z = log_p_z1 + (log_normal_std(z[:, None]) + log_w)[:, None] + log_w[None, :]  # (h, g)
    log_px = log_px_given(model, z[:, None], xs)  # (M, g)
    return torch.logsumexp(log_px[:, None, :] + log_joint_z[None], dim=(1, 2))


@torch.no_grad()
def exact_log_px_2d(model: VAE, xs: torch.Tensor, n: int = 301) -> torch.Tensor:
    """log p(x) = log int p(x | z) N(z; 0, I) dz over a 2-d latent, on an n x n grid: (M,)."""
    z, log_w = trapezoid(-8.0, 8.0, n)
    grid = torch.cartesian_prod(z, z)  # (n*n, 2)
    log_w2 = (log_w[:, None] + log_w[None, :]).reshape(-1)
    return torch.logsumexp(log_px_given(model, grid, xs) + log_normal_std(grid) + log_w2, dim=1)


# -- the IWAE objective at k = 1 -------------------------------------------------------------------------


@pytest.mark.parametrize("structure", [{}, TWO_LAYERS, IAF_POSTERIOR], ids=["gaussian", "two-layers", "iaf"])
def test_iwae_with_one_sample_is_the_monte_carlo_elbo_of_the_same_noise(structure):
    if structure.get("posterior") == "iaf":
        structure = {**structure, "latent_dim": 2}
    model = tiny_vae(objective="iwae", train_k=1, **structure)
    x = SUPPORT[::3]  # (11, D)
    torch.manual_seed(5)
    out = model.loss(Batch(x))
    # The same noise by hand, with torch.distributions: eps1 (1, N, L) first, then eps2 (N, L2).
    torch.manual_seed(5)
    with torch.no_grad():
        mu, logvar, h = model._encoder_outputs(x, None)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn((1, *mu.shape), dtype=mu.dtype)[0]
        log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
        if model.flow is not None:
            z, log_det = model.flow(z, h)
            log_q = log_q - log_det
        log_p = torch.distributions.Bernoulli(logits=model.decoder(z)[:, 0]).log_prob(x).sum(-1)
        if model.encoder2 is not None:
            mu2, logvar2 = model.encoder2(z).chunk(2, dim=-1)
            z2 = mu2 + torch.exp(0.5 * logvar2) * torch.randn(mu2.shape, dtype=mu2.dtype)
            log_q = log_q + torch.distributions.Normal(mu2, torch.exp(0.5 * logvar2)).log_prob(z2).sum(-1)
            mu_p, logvar_p = model.decoder2(z2).chunk(2, dim=-1)
            log_p = log_p + torch.distributions.Normal(mu_p, torch.exp(0.5 * logvar_p)).log_prob(z).sum(-1)
            z = z2
        elbo = log_p + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - log_q  # (N,)
    torch.testing.assert_close(out.loss.detach(), -elbo.mean())
    torch.testing.assert_close(out.logs["iwae"], out.logs["elbo"])  # log-mean-exp of one value is that value
    # And its gradient is the Monte Carlo ELBO's: the elbo objective of the same model and noise,
    # where that one is Monte Carlo too (two layers, IAF).
    if structure:
        same = VAE(model.config.replace(objective="elbo", train_k=0), SPEC).double()
        same.load_state_dict(model.state_dict())
        torch.manual_seed(5)
        ref = same.loss(Batch(x))
        torch.testing.assert_close(ref.loss, out.loss)
        out.loss.backward(), ref.loss.backward()
        for (name, p), q in zip(model.named_parameters(), same.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_iwae_loss_logs_the_bound_itself():
    x = SUPPORT[::2]
    model = tiny_vae(objective="iwae", train_k=8, latent_dim=2)
    dreg = VAE(model.config.replace(estimator="dreg"), SPEC).double()
    dreg.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    plain_out = model.loss(Batch(x))
    torch.manual_seed(1)
    dreg_out = dreg.loss(Batch(x))
    assert set(plain_out.logs) == {"iwae", "elbo", "recon", "kl"}
    for out in (plain_out, dreg_out):
        torch.testing.assert_close(out.loss.detach(), -out.logs["iwae"])  # the bound, not DReG's surrogate
        torch.testing.assert_close(out.logs["elbo"], -(out.logs["recon"] + out.logs["kl"]))
        assert out.logs["iwae"] >= out.logs["elbo"]  # log-mean-exp >= mean, draw by draw
    torch.testing.assert_close(dreg_out.loss, plain_out.loss)
    torch.testing.assert_close(dreg_out.logs, plain_out.logs)


def test_iwae_training_figures_print_as_losses_in_nats():
    """The logged IWAE bound prints negated, in nats, and the loss beside it (which is that
    bound) says so, as the ELBO's does."""
    from deepgen.metrics.units import logged_figures

    figures = {f.label: f for f in logged_figures({"loss": 90.0, "iwae": -90.0, "elbo": -92.5, "recon": 80.0, "kl": 12.5, "step": 3})}
    assert set(figures) == {"loss (-IWAE bound)", "-elbo", "recon", "kl"}
    assert figures["-elbo"].value == 92.5 and all(f.unit == "nats" for f in figures.values())
    plain = {f.label for f in logged_figures({"loss": 92.5, "elbo": -92.5})}
    assert plain == {"loss (-ELBO)"}


def test_kl_warmup_ramps_the_kl_weight_over_optimizer_steps():
    """kl_warmup=N: the t-th optimizer step weighs the KL by beta * min(1, t / N), counted by
    the phase's after-step hook (every micro-batch of a grad_accum step alike); eval mode
    (validation) uses beta itself; the count is saved with the weights (resume goes on)."""
    x = SUPPORT[::3]
    model = tiny_vae(kl_warmup=4, latent_dim=2).train()
    (phase,) = model.phases()
    for t in range(1, 7):
        for _ in range(2):  # two micro-batches of one step: the same weight
            torch.manual_seed(t)
            out = model.loss(Batch(x))
            weight = min(1.0, t / 4)
            assert float(out.logs["kl_weight"]) == pytest.approx(weight)
            torch.testing.assert_close(out.loss.detach(), (out.logs["recon"] + weight * out.logs["kl"]))
        phase.after_step()
    assert float(model.state_dict()["kl_steps"]) == 6
    model.eval()
    torch.manual_seed(0)
    out = model.loss(Batch(x))
    assert "kl_weight" not in out.logs and float(model.kl_steps) == 6
    torch.testing.assert_close(out.loss.detach(), out.logs["recon"] + out.logs["kl"])
    plain = tiny_vae(latent_dim=2)
    assert "kl_steps" not in plain.state_dict() and plain.phases()[0].after_step is None  # runs without warm-up as they were
    with pytest.raises(UserError, match="kl_warmup=5 ramps the KL term of objective=elbo"):
        tiny_vae(kl_warmup=5, objective="iwae")
    with pytest.raises(UserError, match="kl_warmup must be >= 0"):
        tiny_vae(kl_warmup=-1)


def test_kl_warmup_counts_the_trainers_steps_not_its_micro_batches():
    import deepgen
    from deepgen.training import TrainConfig, Trainer

    ds = deepgen.load_dataset("digits", max_train=256)
    model = deepgen.create_model("vae", ds, hidden=(16,), latent_dim=2, kl_warmup=100)
    Trainer(model, ds, TrainConfig(max_steps=10, batch_size=64, grad_accum=4, progress=False, tensorboard=False, log_every=5)).fit()
    assert float(model.kl_steps) == 10


def test_dreg_trains_under_torch_compile():
    """The DReG hook is registered outside the compiled graph (a graph break): the compiled
    loss gives the eager gradients, one and two stochastic layers."""
    for extra in ({}, TWO_LAYERS):
        model = tiny_vae(objective="iwae", estimator="dreg", train_k=4, latent_dim=2, **extra)
        x = SUPPORT[::2]
        grads = []
        for loss in (model.loss, torch.compile(model.loss, backend="aot_eager", dynamic=False)):
            model.zero_grad()
            torch.manual_seed(3)
            loss(Batch(x)).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) > 0
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_elbo_objective_with_several_samples_averages_the_reconstruction():
    x = SUPPORT[1::4]
    model = tiny_vae(train_k=3, latent_dim=2)
    torch.manual_seed(2)
    out = model.loss(Batch(x))
    torch.manual_seed(2)
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn((3, *mu.shape), dtype=mu.dtype)  # (3, N, L)
        recon = torch.stack([model.head.nll(model.decoder(zi), x) for zi in z]).mean()
    torch.testing.assert_close(out.logs["recon"], recon)


# -- DReG --------------------------------------------------------------------------------------------------


def encoder_output_grads(model: VAE, x: torch.Tensor, reps: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training-loss gradient per copy of each example: the gradient of -L_k with
    respect to that copy's (mu, logvar) (reps, M, 2L), and the parameters' summed gradients.

    Each copy's loss depends only on its own encoder outputs, so these are ``reps``
    independent draws of the encoder's gradient per example; the encoder's parameters get
    them through the (fixed, noise-free) Jacobian of (mu, logvar), so equal expectations
    here mean equal expectations for the parameters."""
    xs = x.repeat(reps, 1)  # (reps*M, D), copy r of example m at row r*M + m
    kept = []
    hook = model.encoder.register_forward_hook(lambda mod, inp, out: (out.retain_grad(), kept.append(out), None)[-1])
    torch.manual_seed(seed)
    model.zero_grad()
    model.loss(Batch(xs)).loss.backward()
    hook.remove()
    grads = kept[0].grad * len(xs)  # undo the batch mean
    return grads.reshape(reps, len(x), -1), {n: p.grad.clone() for n, p in model.named_parameters()}


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|mean difference| / its standard error, per coordinate, of draws (R, ...)."""
    se2 = a.var(0) / len(a) + b.var(0) / len(b)
    return (a.mean(0) - b.mean(0)).abs() / se2.sqrt()


X3 = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float64)


def test_dreg_gradient_has_the_plain_iwae_expectation_and_less_variance(monkeypatch):
    def build(k: int, estimator: str) -> VAE:
        return tiny_vae(latent_dim=2, objective="iwae", train_k=k, estimator=estimator)

    reps = 3000
    plain, plain_params = encoder_output_grads(build(4, "plain"), X3, reps, seed=1)
    dreg, _ = encoder_output_grads(build(4, "dreg"), X3, reps, seed=2)
    assert z_scores(plain, dreg).max() < 4.0  # 12 coordinates, the same expectation
    # The decoder's gradient is the plain IWAE estimator's, draw by draw (the same noise).
    _, dreg_params = encoder_output_grads(build(4, "dreg"), X3, reps, seed=1)
    for name, g in plain_params.items():
        if name.startswith("decoder."):
            torch.testing.assert_close(dreg_params[name], g, msg=name)
        else:  # the encoder's differs (another estimator of the same expectation)
            assert not torch.allclose(dreg_params[name], g), name
    # Power: "sticking the landing" (Roeder et al. 2017; DReG without the second w~ factor)
    # is biased for k > 1 (Tucker et al. 2019, sec. 4), and the same test sees it.
    monkeypatch.setattr(_DReGWeights, "_scale", lambda self, grad: grad)
    stl, _ = encoder_output_grads(build(4, "dreg"), X3, reps, seed=3)
    monkeypatch.undo()
    assert z_scores(plain, stl).max() > 10.0
    # At larger k the plain encoder gradient's signal-to-noise ratio falls (Rainforth et al.
    # 2018); DReG's variance is a fraction of it in nearly every coordinate.
    plain32, _ = encoder_output_grads(build(32, "plain"), X3, 1000, seed=4)
    dreg32, _ = encoder_output_grads(build(32, "dreg"), X3, 1000, seed=5)
    ratio = dreg32.var(0) / plain32.var(0)  # (3, 4)
    assert ratio.median() < 0.2 and (ratio < 1).float().mean() >= 0.75, ratio
    snr = lambda g: (g.mean(0).abs() / g.std(0)).mean()  # noqa: E731
    assert snr(dreg32) > snr(plain32), (snr(dreg32), snr(plain32))


def test_dreg_through_two_layers_matches_the_plain_gradient_in_expectation():
    def build(estimator: str) -> VAE:
        return tiny_vae(objective="iwae", train_k=4, estimator=estimator, **TWO_LAYERS)

    plain, plain_params = encoder_output_grads(build("plain"), X3, 2000, seed=1)
    dreg, _ = encoder_output_grads(build("dreg"), X3, 2000, seed=2)
    assert z_scores(plain, dreg).max() < 4.0
    _, dreg_params = encoder_output_grads(build("dreg"), X3, 2000, seed=1)
    for name, g in plain_params.items():
        if name.startswith(("decoder.", "decoder2.")):  # p(x | z1) and p(z1 | z2): the plain gradient
            torch.testing.assert_close(dreg_params[name], g, msg=name)


# -- the bound below log p(x), rising with k ----------------------------------------------------------------


def bound_means(model: VAE, xs: torch.Tensor, ks: tuple[int, ...], reps: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """k -> (mean, standard error) over ``reps`` draws of the IWAE bound, per example (M,)."""
    out = {}
    for k in ks:
        g = torch.Generator().manual_seed(k)
        draws = model.log_prob(xs.repeat(reps, 1), k=k, generator=g).reshape(reps, len(xs))
        out[k] = draws.mean(0), draws.std(0) / math.sqrt(reps)
    return out


@pytest.mark.parametrize(
    "structure,exact",
    [
        ({"latent_dim": 1}, exact_log_px),
        ({"latent_dim": 1, **TWO_LAYERS}, exact_log_px_two_layers),
        ({"latent_dim": 2, **IAF_POSTERIOR}, exact_log_px_2d),
    ],
    ids=["one-layer", "two-layers", "iaf"],
)
def test_iwae_bound_rises_with_k_and_stays_below_the_exact_log_likelihood(structure, exact):
    model = tiny_vae(scale=0.5, **structure)
    xs = SUPPORT[::4]  # (8, D)
    with torch.no_grad():
        log_px = exact(model, SUPPORT)  # (32,)
    assert torch.exp(log_px).sum().item() == pytest.approx(1.0, abs=1e-4)  # the quadrature sees all of p
    log_px = log_px[::4]
    means = bound_means(model, xs, (1, 10, 300), reps=40)
    (m1, s1), (m10, s10), (m300, s300) = means[1], means[10], means[300]
    assert (m10 - m1 > -3 * (s1 + s10)).all() and (m10 - m1).mean() > 0.05, (m1, m10)
    assert (m300 - m10 > -3 * (s10 + s300)).all() and (m300 - m10).mean() > 0, (m10, m300)
    assert (m300 <= log_px + 3 * s300 + 1e-6).all(), (m300, log_px)  # below log p(x), up to noise
    assert (log_px - m300).mean() < (log_px - m1).mean() / 3  # and much closer to it than the ELBO


def test_iwae_training_raises_the_bound():
    protos = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = (protos[torch.randint(2, (512,), generator=g)] + torch.bernoulli(torch.full((512, D), 0.05, dtype=torch.float64), generator=g)) % 2
    for structure in ({"estimator": "plain"}, {"estimator": "dreg", **TWO_LAYERS}, IAF_POSTERIOR):
        model = tiny_vae(scale=0.0, latent_dim=2, objective="iwae", train_k=8, lr=1e-2, **structure)
        before = model.log_prob(x[:64], k=50, generator=torch.Generator().manual_seed(1)).mean()
        fit_one_phase(model, x, steps=120, batch=64)
        after = model.log_prob(x[:64], k=50, generator=torch.Generator().manual_seed(1)).mean()
        assert after > before + 1.0, (structure, before, after)


# -- the IAF ------------------------------------------------------------------------------------------------


def perturbed(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def test_made_with_a_context_is_autoregressive_and_uses_the_context():
    made = perturbed(MADE(4, (12, 12), out_per_dim=2, context=3, context_output=True).double())
    x, h = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v, h)[0], x)[:, :, 0]  # (D, P, D)
    for d in range(4):
        assert (jac[d, :, d:] == 0).all()  # output d ignores inputs d, d+1, ...
        if d:
            assert (jac[d, :, :d] != 0).any()  # and sees the earlier ones
    dh = torch.autograd.functional.jacobian(lambda v: made(x, v)[0], h)[:, :, 0]  # (D, P, C)
    assert (dh.abs().sum(-1) > 0).all()  # every output uses the context, the first one too
    # Without context_output the first dimension has no hidden unit below it, so no context.
    plain = MADE(4, (12, 12), out_per_dim=2, context=3, context_output=False).double()
    assert (torch.autograd.functional.jacobian(lambda v: plain(x, v)[0], h)[0] == 0).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_step_log_det_is_autograds_and_its_jacobian_is_triangular(reverse):
    step = perturbed(IAFStep(4, (16,), 3, "elu", reverse=reverse, seed=1).double())
    z, h = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    _, log_sigma = step(z, h)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: step(v[None], h[i:i + 1])[0][0], z[i])  # (4, 4)
        torch.testing.assert_close(log_sigma[i].sum(), torch.linalg.slogdet(jac)[1])
        # z'_a depends on z_b only for b before a in the step's order (and on z_a itself through sigma_a * z_a).
        upper = torch.triu(jac, diagonal=1)
        strict = torch.tril(jac, diagonal=-1) if reverse else upper
        assert (strict == 0).all(), jac
        assert ((upper if reverse else torch.tril(jac, diagonal=-1)) != 0).any()
        torch.testing.assert_close(torch.diagonal(jac), torch.exp(log_sigma[i]))


def test_iaf_log_det_over_steps_is_autograds():
    flow = perturbed(IAF(3, 3, (16,), 2, "tanh").double())
    z, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    _, log_det = flow(z, h)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow(v[None], h[i:i + 1])[0][0], z[i])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jac)[1])
        assert (torch.triu(jac, 1) != 0).any() and (torch.tril(jac, -1) != 0).any()  # reversed orders mix


def iaf_inverse(flow: IAF, zt: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """z0 from z_T (M, L): each step inverted one dimension at a time in its order,
    z_a = (z'_a - (1 - sigma_a) m_a) / sigma_a with (m_a, sigma_a) from the dimensions already found."""
    z = zt
    for step in reversed(flow.steps):
        target, z = z, torch.zeros_like(z)
        order = range(zt.shape[1] - 1, -1, -1) if step.reverse else range(zt.shape[1])
        for a in order:
            out = step.made(z.flip(-1), h).flip(1) if step.reverse else step.made(z, h)  # (M, L, 2)
            m, sigma = out[:, a, 0], torch.sigmoid(out[:, a, 1] + _IAF_GATE_BIAS)
            z = z.clone()
            z[:, a] = (target[:, a] - (1 - sigma) * m) / sigma
    return z


@torch.no_grad()
def test_iaf_posterior_density_normalises_and_is_the_one_the_bound_uses():
    model = tiny_vae(scale=0.5, latent_dim=2, **IAF_POSTERIOR)
    x = SUPPORT[[3, 17]]
    mu, logvar, h = model._encoder_outputs(x, None)  # (2, 2), (2, 2), (2, 3)

    def log_q(zt: torch.Tensor, i: int) -> torch.Tensor:
        """log q(z_T | x_i) at codes zt (G, 2), through the inverse flow."""
        hi = h[i].expand(len(zt), -1)
        z0 = iaf_inverse(model.flow, zt, hi)
        # Far out on the grid the preimage overflows (sigma -> 0 in the division): q is 0 there.
        found = torch.isfinite(z0).all(-1)
        assert found.float().mean() > 0.95
        z0 = torch.where(found[:, None], z0, torch.zeros_like(z0))
        z_back, log_det = model.flow(z0, hi)
        torch.testing.assert_close(z_back[found], zt[found])  # the inverse is right
        base = torch.distributions.Normal(mu[i], torch.exp(0.5 * logvar[i])).log_prob(z0).sum(-1)
        return torch.where(found, base - log_det, torch.full_like(base, -math.inf))

    z, log_w = trapezoid(-9.0, 9.0, 241)
    grid = torch.cartesian_prod(z, z)  # (G, 2)
    log_w2 = (log_w[:, None] + log_w[None, :]).reshape(-1)
    for i in range(2):
        assert torch.logsumexp(log_q(grid, i) + log_w2, 0).exp().item() == pytest.approx(1.0, abs=2e-3)
    # The density the importance weights use, at the codes drawn with the same noise.
    torch.manual_seed(4)
    _, log_ratio = model._draw(x, None, (mu, logvar, h), 6)  # log p(z) - log q(z | x), (6, 2)
    torch.manual_seed(4)
    eps = torch.randn((6, 2, 2), dtype=torch.float64)
    for i in range(2):
        zt = model.flow(mu[i] + torch.exp(0.5 * logvar[i]) * eps[:, i], h[i].expand(6, -1))[0]
        torch.testing.assert_close(log_normal_std(zt) - log_ratio[:, i], log_q(zt, i))


# -- two stochastic layers: structure and shapes -----------------------------------------------------------


def test_burda_architecture_from_settings():
    spec = DataSpec(shape=(1, 28, 28), kind="binary")
    settings = {"hidden": (200, 200), "latent_dim": 100, "stochastic_layers": 2, "latent_dim2": 50,
                "hidden2": (100, 100), "activation": "tanh"}
    model = VAE(VAEConfig(**settings), spec)
    widths = lambda net: [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert widths(model.encoder) == [(784, 200), (200, 200), (200, 200)]  # q(z1 | x): mu, logvar of 100
    assert widths(model.encoder2) == [(100, 100), (100, 100), (100, 100)]  # q(z2 | z1): mu, logvar of 50
    assert widths(model.decoder2) == [(50, 100), (100, 100), (100, 200)]  # p(z1 | z2)
    assert widths(model.decoder) == [(100, 200), (200, 200), (200, 784)]  # p(x | z1)
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 8
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    assert model.encode(x).shape == (3, 100)
    assert model.log_prob(x, k=4).shape == (3,)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_two_layer_shapes_sample_encode_decode(network):
    spec = DataSpec(shape=(1, 8, 8), kind="binary", num_classes=3)
    torch.manual_seed(0)
    model = VAE(VAEConfig(network=network, hidden=(32,), channels=(8,), latent_dim=4, stochastic_layers=2,
                          latent_dim2=2, hidden2=(8, 8), conditional=True), spec)
    y = torch.tensor([0, 1, 2, 1, 0])
    x = model.sample(5, generator=torch.Generator().manual_seed(0), cond=y)
    assert x.shape == (5, 1, 8, 8) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert model.sample(5, cond=y, mean=True).shape == (5, 1, 8, 8)
    z = model.encode(x, cond=y)
    assert z.shape == (5, 4)  # z1's space: the decoder's input
    torch.testing.assert_close(z, model.posterior(x, model.one_hot(y, 5))[0])
    assert model.decode(z, cond=y).shape == (5, 1, 8, 8)
    assert model.reconstruct(x, cond=y).shape == (5, 1, 8, 8)
    assert model.interpolate(x[0], x[1], 4, cond=1).shape == (4, 1, 8, 8)
    lp, el = model.log_prob(x, cond=y, k=6), model.elbo(x, cond=y)
    assert lp.shape == el.shape == (5,) and torch.isfinite(lp).all() and torch.isfinite(el).all()
    out = model.loss(Batch(x, y))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_iaf_encode_is_the_flow_of_the_posterior_mean():
    model = tiny_vae(latent_dim=2, **IAF_POSTERIOR)
    x = SUPPORT[:4]
    mu, _, h = model._encoder_outputs(x, None)
    torch.testing.assert_close(model.encode(x), model.flow(mu, h)[0])
    assert model.likelihood_info().kind == "bound"


# -- settings -------------------------------------------------------------------------------------------------


def test_training_samples_default_by_objective():
    assert VAEConfig().train_samples == 1
    assert VAEConfig(objective="iwae").train_samples == 50  # Burda et al.'s k
    assert VAEConfig(objective="iwae", train_k=5).train_samples == 5
    cfg = VAEConfig().with_overrides({"objective": "iwae", "estimator": "dreg", "train_k": "5000",
                                      "stochastic_layers": "2", "hidden2": "100,100", "latent_dim2": "50"})
    assert (cfg.objective, cfg.estimator, cfg.train_k, cfg.stochastic_layers, cfg.hidden2) == ("iwae", "dreg", 5000, 2, (100, 100))
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"objective": "iwea"}, r"objective got 'iwea'. Accepted: elbo, iwae"),
        ({"estimator": "reinforce"}, r"estimator got 'reinforce'. Accepted: dreg, plain"),
        ({"posterior": "flow"}, r"posterior got 'flow'. Accepted: gaussian, iaf"),
        ({"estimator": "dreg"}, r"estimator=dreg is a gradient estimator of the IWAE bound; set objective=iwae"),
        ({"objective": "iwae", "beta": 2.0}, r"beta=2.0 weights the KL term of objective=elbo"),
        ({"train_k": -1}, r"train_k must be >= 0"),
        ({"stochastic_layers": 3}, r"stochastic_layers must be 1 or 2, got 3"),
        ({"latent_dim2": 0}, r"latent_dim2 must be >= 1"),
        ({"hidden2": (8, 0)}, r"hidden2 sizes must be >= 1"),
        ({"iaf_steps": 0}, r"iaf_steps must be >= 1"),
        ({"iaf_hidden": ()}, r"iaf_hidden must be one or more sizes >= 1"),
        ({"iaf_context": -1}, r"iaf_context must be >= 0"),
        ({"posterior": "iaf", "stochastic_layers": 2}, r"posterior=iaf refines a one-layer posterior; stochastic_layers=2 takes posterior=gaussian"),
        ({"posterior": "iaf", "objective": "iwae", "estimator": "dreg"}, r"estimator=dreg needs log q\(z \| x\).*Use estimator=plain with posterior=iaf"),
    ],
)
def test_bad_settings_say_what_is_accepted(bad, message):
    with pytest.raises(UserError, match=message):
        VAEConfig(**bad)


@pytest.mark.parametrize("extra", [{}, {"stochastic_layers": 2, "latent_dim2": 2, "hidden2": (8,)}, {"posterior": "iaf", "iaf_hidden": (8,)}],
                         ids=["one-layer", "two-layers", "iaf"])
def test_codes_and_log_densities_stay_float32_under_bf16_autocast(extra):
    """Under bf16=true the networks' matmuls run in bf16, but the codes, their noise and
    every log-density term of the bound are float32 (a bf16 code lattice scored as a
    continuous density would be off by nats)."""
    model = VAE(VAEConfig(hidden=(16,), latent_dim=2, objective="iwae", train_k=3, **extra), SPEC)
    x = SUPPORT[::4].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = model._encoder_outputs(x, None)
        log_px_z, log_ratio = model._draw(x, None, q, 3)
    assert all(t is None or t.dtype == torch.float32 for t in q)
    assert log_ratio.dtype == torch.float32 and log_px_z.dtype == torch.float32
