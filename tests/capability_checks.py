"""One check per optional capability of the model contract (deepgen.models.base).

Each ``check_<capability>(model, x, cond)`` asserts what the capability promises for
inputs ``x`` (N, *spec.shape) in model space and labels ``cond`` (N,) or None; it raises
AssertionError when the model breaks the promise. tests/test_capabilities.py runs them on
every registered model that declares the capability (and on small reference models,
including broken ones that each check must reject).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepgen.models.base import (
    CAPABILITIES,
    Autoregressive,
    GenerativeModel,
)

Check = Callable[[GenerativeModel, torch.Tensor, "torch.Tensor | None"], None]


def _kw(cond: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {} if cond is None else {"cond": cond}


def _finite(t: torch.Tensor, what: str) -> None:
    assert torch.isfinite(t.double()).all(), f"{what} is not finite: {t}"


def check_log_prob(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """(N,) finite log-likelihoods, and a declared description of what they are."""
    info = model.likelihood_info()
    assert info is not None, "a model with log_prob must declare likelihood_info()"
    assert info.kind in ("exact", "bound", "none") and isinstance(info.discrete, bool) and info.note
    with torch.no_grad():
        lp = model.log_prob(x, **_kw(cond))
    assert lp.shape == (len(x),), f"log_prob shape {tuple(lp.shape)}, expected ({len(x)},)"
    _finite(lp, "log_prob")
    if info.discrete and info.kind == "exact":
        assert bool((lp <= 1e-6).all()), "an exact probability of discrete values is at most 1"


def check_elbo(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """(N,) finite ELBOs; the model declares its likelihood (the evaluator's bits/dim need it)."""
    assert model.likelihood_info() is not None, "a model with elbo must declare likelihood_info()"
    with torch.no_grad():
        e = model.elbo(x, **_kw(cond))
    assert e.shape == (len(x),)
    _finite(e, "elbo")


def check_encode(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """(N, L) finite codes."""
    with torch.no_grad():
        z = model.encode(x, **_kw(cond))
    assert z.dim() == 2 and z.shape[0] == len(x), f"codes must be (N, L), got {tuple(z.shape)}"
    _finite(z, "codes")


def check_decode(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """decode of codes (from encode when the model has it, else standard normal) is (N, *shape)."""
    with torch.no_grad():
        if hasattr(model, "encode"):
            z = model.encode(x, **_kw(cond))
        else:
            z = torch.randn(len(x), getattr(model.config, "latent_dim", 2))
        out = model.decode(z, **_kw(cond))
    assert tuple(out.shape) == tuple(x.shape), f"decode gives {tuple(out.shape)}, x is {tuple(x.shape)}"
    _finite(out, "decode")


def check_reconstruct(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    with torch.no_grad():
        out = model.reconstruct(x, **_kw(cond))
    assert tuple(out.shape) == tuple(x.shape)
    _finite(out, "reconstruct")


def check_reconstruction_nll(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    with torch.no_grad():
        nll = model.reconstruction_nll(x, **_kw(cond))
    assert nll.shape == (len(x),)
    _finite(nll, "reconstruction_nll")


def check_interpolate(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    kw = {} if cond is None else {"cond": cond[:1]}
    out = model.interpolate(x[0], x[1], 5, **kw)
    assert tuple(out.shape) == (5, *x.shape[1:])
    _finite(out, "interpolate")


def check_invertible(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None, *, jacobian_examples: int = 2) -> None:
    """In float64: inverse(forward(x)) = x to 1e-5, z holds as many values as x, and
    log_det equals log |det J| of autograd's Jacobian of one example's map (on small inputs)."""
    model = model.double()
    x = x.double()
    with torch.no_grad():
        z, log_det = model(x, **_kw(cond))
        back = model.inverse(z, **_kw(cond))
    assert z.shape[0] == len(x) and z[0].numel() == x[0].numel(), "z must hold as many values per example as x"
    assert log_det.shape == (len(x),)
    _finite(log_det, "log_det")
    err = (back - x).abs().max().item()
    assert err < 1e-5, f"inverse(forward(x)) differs from x by {err:.3g}"
    for i in range(min(jacobian_examples, len(x))):
        xi = x[i : i + 1]
        ci = None if cond is None else cond[i : i + 1]

        def flat_map(v: torch.Tensor, shape: torch.Size = xi.shape, ci: torch.Tensor | None = ci) -> torch.Tensor:
            zi, _ = model(v.reshape(shape), **_kw(ci))
            return zi.reshape(-1)

        jac = torch.autograd.functional.jacobian(flat_map, xi.reshape(-1))  # (D, D)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0, "the Jacobian is singular"
        assert abs(logabs.item() - log_det[i].item()) < 1e-5 * max(1.0, abs(logabs.item())), (
            f"log_det {log_det[i].item():.8g} but autograd's log|det J| is {logabs.item():.8g}"
        )


def _positions(t: int, k: int = 6) -> list[int]:
    """Up to k positions spread over 0..t-1, the first and the last included."""
    if t <= k:
        return list(range(t))
    return sorted({round(j * (t - 1) / (k - 1)) for j in range(k)})


def check_autoregressive(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """Output i depends only on positions < i of the model's order: zero gradient w.r.t.
    inputs at positions >= i (float data), or no change when they change (token data)."""
    assert isinstance(model, Autoregressive)
    order = model.ordering()
    n = len(x)
    d = x[0].numel()
    assert order.dim() == 1 and sorted(order.tolist()) == list(range(d)), "ordering() must be a permutation of the flat positions"
    if x.dtype.is_floating_point:
        xg = x.detach().clone().requires_grad_(True)
        out = model.position_outputs(xg, **_kw(cond))
        assert out.shape[:2] == (n, d), f"position_outputs must be (N, T, ...), got {tuple(out.shape)}"
        for i in _positions(d):
            (g,) = torch.autograd.grad(out[:, i].sum(), xg, retain_graph=True, allow_unused=True)
            if g is None:
                continue
            later = order[i:]
            leak = g.reshape(n, -1)[:, later].abs().max().item()
            assert leak == 0, f"output {i} has gradient {leak:.3g} w.r.t. inputs at positions >= {i}"
        return
    with torch.no_grad():
        out = model.position_outputs(x, **_kw(cond))
        assert out.shape[:2] == (n, d)
        vocab = int(getattr(model.spec, "vocab_size", 0) or (int(x.max()) + 2))
        gen = torch.Generator().manual_seed(0)
        for i in _positions(d):
            changed = x.clone().reshape(n, -1)
            later = order[i:]
            changed[:, later] = torch.randint(0, vocab, (n, len(later)), generator=gen).to(x.dtype)
            out2 = model.position_outputs(changed.reshape(x.shape), **_kw(cond))
            diff = (out2[:, : i + 1] - out[:, : i + 1]).abs().max().item()
            assert diff == 0, f"outputs 0..{i} changed by {diff:.3g} when inputs at positions >= {i} changed"


def check_cached_decoding(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """The cached, one-position-at-a-time outputs equal the uncached ones."""
    with torch.no_grad():
        full = model.position_outputs(x, **_kw(cond))
        cached = model.cached_position_outputs(x, **_kw(cond))
    assert cached.shape == full.shape
    err = (cached.double() - full.double()).abs().max().item()
    scale = max(1.0, full.double().abs().max().item())
    assert err <= 1e-4 * scale, f"cached outputs differ from uncached ones by {err:.3g}"


def check_complete(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """Known positions stay as they are; the output has x's shape and is finite."""
    gen = torch.Generator().manual_seed(0)
    known = torch.rand(x.shape, generator=gen) < 0.5
    with torch.no_grad():
        out = model.complete(x, known, generator=torch.Generator(x.device).manual_seed(1), **_kw(cond))
    assert out.shape == x.shape
    assert torch.equal(out[known], x[known]), "complete() changed known positions"
    _finite(out.double(), "complete")


def check_generate(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """Continuing a prompt keeps it and gives ``length`` ids, also past the model's context."""
    flat = x.reshape(len(x), -1)
    prompt = flat[:, : max(1, flat.shape[1] // 3)].long()
    length = 2 * flat.shape[1] + 3  # past the context: the sliding window
    with torch.no_grad():
        out = model.generate_ids(prompt, length, generator=torch.Generator(x.device).manual_seed(0), **_kw(cond))
    assert out.shape == (len(x), length), f"generate gives {tuple(out.shape)}, expected {(len(x), length)}"
    assert torch.equal(out[:, : prompt.shape[1]], prompt), "generate changed the prompt"
    assert int(out.min()) >= 0


def check_data_init(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """data_init on a batch leaves a model whose losses are finite."""
    from deepgen.data.dataset import Batch

    batch = Batch(x, cond)
    model.data_init(batch)
    for phase in model.phases():
        loss = model.loss(batch, phase.name).loss
        _finite(loss.detach(), f"the {phase.name} loss after data_init")


def check_histograms(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    h = model.histograms()
    assert isinstance(h, dict) and h and all(isinstance(v, torch.Tensor) for v in h.values())


CHECKS: dict[str, Check] = {
    "log_prob": check_log_prob,
    "elbo": check_elbo,
    "encode": check_encode,
    "decode": check_decode,
    "reconstruct": check_reconstruct,
    "reconstruction_nll": check_reconstruction_nll,
    "interpolate": check_interpolate,
    "invertible": check_invertible,
    "complete": check_complete,
    "autoregressive": check_autoregressive,
    "cached_decoding": check_cached_decoding,
    "generate_ids": check_generate,
    "data_init": check_data_init,
    "histograms": check_histograms,
}
assert set(CHECKS) == set(CAPABILITIES), "every capability of the contract has a check"
