"""Maths tests of the neural spline flows (deepgen.nn.splines; Durkan et al. 2019).

The spline alone: exact inverse, log-determinant against autograd, knots and knot
derivatives, monotonicity, identity tails, and finite values and gradients at and beyond
the tail bounds and at knots (float32 and float64). The two bijections: exact inverse,
log_det against the full Jacobian, finiteness beyond the tails and float32 log_det under
bf16 autocast. Every parameter is random (zero-initialised layers perturbed), so no test
passes on an identity map.
"""

from __future__ import annotations

import pytest
import torch

from deepgen.nn.flows import Sequential
from deepgen.nn.splines import (
    AutoregressiveSpline,
    SplineCoupling,
    identity_derivative_logit,
    rational_quadratic_spline,
)

B = 2.5
K = 6
MIN = 1e-3


def _params(n: int, k: int = K, dtype=torch.float64, scale: float = 1.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    h = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    d = torch.randn(n, k - 1, generator=g, dtype=torch.float64) * scale
    return w.to(dtype), h.to(dtype), d.to(dtype)


def _knots(logits: torch.Tensor) -> torch.Tensor:
    """The knots, computed here independently of the module: -B + 2B * cumsum(sizes)."""
    k = logits.shape[-1]
    sizes = MIN + (1 - MIN * k) * torch.softmax(logits, -1)
    return torch.cat([torch.full_like(sizes[..., :1], -B), -B + 2 * B * torch.cumsum(sizes, -1)[..., :-1], torch.full_like(sizes[..., :1], B)], -1)


def _spline(x, w, h, d, inverse=False):
    return rational_quadratic_spline(x, w, h, d, inverse=inverse, tail_bound=B)


SPECIAL = [-1e30, -1e6, -B - 1.0, -B - 1e-9, -B, -B + 1e-9, 0.0, B - 1e-9, B, B + 1e-9, B + 1.0, 1e6, 1e30]


def _points(dtype, seed: int = 1):
    """Per-row points: uniform inside, the special points, and knot 1..K-1 of each row's own
    widths (row i of the parameters goes with point i)."""
    n_in = 40
    g = torch.Generator().manual_seed(seed)
    inside = (torch.rand(n_in, generator=g, dtype=torch.float64) * 2 - 1) * B
    special = torch.tensor(SPECIAL, dtype=torch.float64)
    n = n_in + len(special) + (K - 1)
    w, h, d = _params(n, dtype=torch.float64, seed=seed)
    knots = _knots(w[-(K - 1):]).diagonal(offset=1)[: K - 1]  # row j gets its knot j + 1
    x = torch.cat([inside, special, knots])
    return x.to(dtype), w.to(dtype), h.to(dtype), d.to(dtype)


# ---------------------------------------------------------------- the spline alone


@pytest.mark.parametrize("start_inverse", [False, True])
def test_spline_inverse_is_exact_float64(start_inverse):
    x, w, h, d = _points(torch.float64)
    y, ld = _spline(x, w, h, d, inverse=start_inverse)
    back, ld_back = _spline(y, w, h, d, inverse=not start_inverse)
    assert torch.allclose(back, x, atol=1e-6, rtol=0), (back - x).abs().max()
    assert torch.allclose(ld + ld_back, torch.zeros_like(ld), atol=1e-6)
    assert y.dtype == torch.float64 and ld.dtype == torch.float64


@pytest.mark.parametrize("inverse", [False, True])
def test_logabsdet_is_log_of_autograd_derivative(inverse):
    x, w, h, d = _points(torch.float64)
    if inverse:  # points in y-space: the special ones, and the forward image of the others
        x = torch.where(x.abs() >= B, x, _spline(x, w, h, d)[0])
    x = x.clone().requires_grad_(True)
    y, ld = _spline(x, w, h, d, inverse=inverse)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.all(grad > 0)
    assert torch.allclose(ld, grad.log(), atol=1e-8), (ld - grad.log()).abs().max()


def test_knots_map_to_knots_with_their_derivatives():
    """The spline is fixed by its knots (x_k, y_k) and knot derivatives d_k (Durkan et al.
    eq. 4): check g(x_k) = y_k and g'(x_k) = d_k (d_0 = d_K = 1) for every knot."""
    n = 7
    w, h, d = _params(n, seed=3)
    xk, yk = _knots(w), _knots(h)  # (n, K + 1)
    dk = torch.cat([torch.ones(n, 1, dtype=w.dtype), MIN + torch.nn.functional.softplus(d), torch.ones(n, 1, dtype=w.dtype)], -1)
    rep = lambda t: t[:, None, :].expand(n, K + 1, t.shape[-1])  # noqa: E731
    x = xk.clone().requires_grad_(True)
    y, ld = _spline(x, rep(w), rep(h), rep(d))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(y, yk, atol=1e-12)
    assert torch.allclose(grad, dk, atol=1e-9)
    assert torch.allclose(ld, dk.log(), atol=1e-9)


def test_monotone_and_identity_outside_the_bounds():
    w, h, d = (t[0] for t in _params(1, seed=4))  # (K,): broadcast over every point
    x = torch.linspace(-B - 2, B + 2, 20001, dtype=torch.float64)
    y, ld = _spline(x, w, h, d)
    assert y.shape == x.shape
    assert torch.all(y.diff() > 0)
    out = x.abs() > B
    assert torch.equal(y[out], x[out]) and torch.equal(ld[out], torch.zeros_like(ld[out]))
    assert torch.all(y[~out].abs() <= B)
    xi, ldi = _spline(x, w, h, d, inverse=True)
    assert torch.all(xi.diff() > 0)
    assert torch.equal(xi[out], x[out]) and torch.equal(ldi[out], torch.zeros_like(ldi[out]))
    # The tails join with a continuous derivative: 1 on both sides of +-B.
    edge = torch.tensor([-B, B], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_spline(edge, w, h, d)[0].sum(), edge)
    assert torch.allclose(g, torch.ones_like(g), atol=1e-9)


def test_identity_parameters_give_the_identity():
    n = 5
    w = torch.zeros(n, K, dtype=torch.float64)
    d = torch.full((n, K - 1), identity_derivative_logit(MIN), dtype=torch.float64)
    x = torch.linspace(-B - 1, B + 1, n, dtype=torch.float64)
    for inverse in (False, True):
        y, ld = _spline(x, w, w, d, inverse=inverse)
        assert torch.allclose(y, x, atol=1e-12) and torch.allclose(ld, torch.zeros_like(ld), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inverse", [False, True])
def test_finite_values_and_gradients_at_and_beyond_the_bounds(dtype, inverse):
    x, w, h, d = _points(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, h, d)]
    y, ld = _spline(*leaves, inverse=inverse)
    assert y.dtype == dtype and ld.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    grads = torch.autograd.grad((y + ld).sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    # and back: the other direction of the outputs is finite, with finite gradients
    y = y.detach().requires_grad_(True)
    back, ld_back = _spline(y, *leaves[1:], inverse=not inverse)
    assert torch.isfinite(back).all() and torch.isfinite(ld_back).all()
    grads = torch.autograd.grad((back + ld_back).sum(), [y, *leaves[1:]])
    assert all(torch.isfinite(g).all() for g in grads)
    # back = x up to rounding magnified by the conditioning 1 / |d out / d in| = exp(-ld)
    # (flat bins in float32).
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    inside = x.abs() <= B
    err = (back - x).abs().detach()
    assert torch.all(err[inside] <= tol * (1 + torch.exp(-ld.detach()[inside]))), err.max()
    assert torch.equal(back[~inside], x[~inside])


def test_float32_inverse_residual_with_steep_parameters():
    """With large random parameters (flat and steep bins) the float32 inverse still solves
    g(x) = y to a few ulps: the root avoids the cancelling form on either sign of b."""
    n = 20000
    w, h, d = _params(n, dtype=torch.float32, scale=5.0, seed=7)
    x = (torch.rand(n, generator=torch.Generator().manual_seed(8)) * 2 - 1) * B
    y, _ = _spline(x, w, h, d)
    back, _ = _spline(y, w, h, d, inverse=True)
    again, _ = _spline(back, w, h, d)
    assert (again - y).abs().max() < 1e-5


def test_bad_parameter_shapes_are_refused():
    x = torch.zeros(3)
    w = torch.zeros(3, K)
    with pytest.raises(ValueError, match="K - 1 derivatives"):
        rational_quadratic_spline(x, w, w, torch.zeros(3, K), inverse=False, tail_bound=B)
    with pytest.raises(ValueError, match="min_bin_width"):
        rational_quadratic_spline(x, w, w, torch.zeros(3, K - 1), inverse=False, tail_bound=B, min_bin_width=0.2)


# ---------------------------------------------------------------- the bijections

D = 5
C = 3
N = 6


def _layer(kind: str, context: int = 0, dim: int = D, dtype=torch.float64, seed: int = 0, perturb: bool = True):
    torch.manual_seed(seed)
    if kind == "coupling":
        layer = SplineCoupling(dim, (16, 16), bins=K, tail_bound=B, context=context)
    elif kind == "coupling-flip":
        layer = SplineCoupling(dim, (16, 16), bins=K, tail_bound=B, context=context, flip=True)
    else:
        layer = AutoregressiveSpline(dim, (16, 16), bins=K, tail_bound=B, context=context)
    layer = layer.to(dtype)
    if perturb:
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    return layer


def _data(dtype=torch.float64, context: int = 0, n: int = N, dim: int = D, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, dim, generator=g, dtype=torch.float64) * 1.5).to(dtype)  # some beyond B
    cond = torch.randn(n, context, generator=g, dtype=torch.float64).to(dtype) if context else None
    return x, cond


KINDS = ["coupling", "coupling-flip", "ar"]


@pytest.mark.parametrize("kind", KINDS)
def test_layers_start_as_the_identity(kind):
    layer = _layer(kind, context=C, perturb=False)
    x, cond = _data(context=C)
    z, ld = layer(x, cond)
    # The derivative bias log(expm1(1 - min_derivative)) was rounded to float32 when the
    # layer was built, so softplus gives 1 to ~1e-8, not 1e-16.
    assert torch.allclose(z, x, atol=1e-7) and torch.allclose(ld, torch.zeros_like(ld), atol=1e-7)


@pytest.mark.parametrize("context", [0, C])
@pytest.mark.parametrize("kind", KINDS)
def test_inverse_is_exact(kind, context):
    layer = _layer(kind, context)
    x, cond = _data(context=context)
    z, ld = layer(x, cond)
    assert ld.shape == (N,) and ld.dtype == torch.float64
    assert (z - x).abs().max() > 1e-2  # not the identity
    assert torch.allclose(layer.inverse(z, cond), x, atol=1e-6, rtol=0)
    assert torch.allclose(layer(layer.inverse(x, cond), cond)[0], x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dim", [4, D])
@pytest.mark.parametrize("context", [0, C])
@pytest.mark.parametrize("kind", KINDS)
def test_log_det_is_log_abs_det_jacobian(kind, context, dim):
    layer = _layer(kind, context, dim=dim)
    x, cond = _data(context=context, dim=dim)
    _, ld = layer(x, cond)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v, cond)[0], x)  # (N, D, N, D)
    blocks = jac.diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (N, D, D)
    off = jac.clone()
    for n in range(len(x)):
        off[n, :, n, :] = 0
    assert torch.equal(off, torch.zeros_like(off))  # examples are independent
    sign, logabs = torch.linalg.slogdet(blocks)
    assert torch.all(sign > 0)
    assert torch.allclose(ld, logabs, atol=1e-8), (ld - logabs).abs().max()
    if kind == "ar":  # triangular in MADE's order: z at position i depends on x at positions <= i
        order = layer.made.order()
        tri = blocks[:, order][:, :, order]
        assert torch.equal(tri.triu(1), torch.zeros_like(tri))
    else:  # the kept half passes unchanged
        kept = layer.kept
        assert torch.equal(blocks[:, kept][:, :, kept], torch.eye(len(kept), dtype=x.dtype).expand(len(x), -1, -1))


def test_coupling_halves_cover_every_dimension():
    a, b = _layer("coupling", dim=5), _layer("coupling-flip", dim=5)
    assert sorted(a.moved.tolist() + b.moved.tolist()) == list(range(5))
    assert set(a.kept.tolist()) == set(b.moved.tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_finite_beyond_the_tail_bound(kind, dtype):
    layer = _layer(kind, context=C, dtype=dtype)
    x, cond = _data(dtype, context=C, n=4)
    x[0] = torch.tensor([1e6, -1e6, B, -B, B + 1e-9], dtype=dtype)
    x[1] = torch.tensor([-B, B, -1e6, 1e6, -B - 1e-9], dtype=dtype)
    x[2, ::2] = 1e6
    x = x.requires_grad_(True)
    z, ld = layer(x, cond)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all()
    grads = torch.autograd.grad((z.sum() + ld.sum()), [x, *layer.parameters()], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    z = z.detach()
    back = layer.inverse(z, cond)
    assert torch.isfinite(back).all()
    # Values beyond the bound pass unchanged both ways. Inside, inputs of 1e6 drive the
    # network's logits to the spline's limits (bins of 1e-3 of the interval, derivatives
    # 1e-3, log_det near -27), so compare in z-space, where the inverse is well conditioned.
    out = x.detach().abs() > B
    assert torch.equal(back[out], x.detach()[out]) and torch.equal(z[out], x.detach()[out])
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert torch.allclose(layer(back, cond)[0], z, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_log_det_is_float32_under_bf16_autocast(kind):
    layer = _layer(kind, context=C, dtype=torch.float32)
    x, cond = _data(torch.float32, context=C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, ld = layer(x, cond)
        back = layer.inverse(z, cond)
    assert ld.dtype == torch.float32 and z.dtype == torch.float32
    assert torch.isfinite(ld).all() and torch.isfinite(back).all()
    z32, ld32 = layer(x, cond)
    assert torch.allclose(ld, ld32, atol=0.5)  # bf16 network, float32 spline


@pytest.mark.parametrize("kind", KINDS)
def test_context_is_used_and_required(kind):
    layer = _layer(kind, context=C)
    x, cond = _data(context=C)
    with pytest.raises(ValueError, match="context"):
        layer(x)
    z1, _ = layer(x, cond)
    z2, _ = layer(x, cond + 1.0)
    assert (z1 - z2).abs().max() > 1e-3


def test_autoregressive_inverse_follows_the_mask_in_use():
    torch.manual_seed(0)
    layer = AutoregressiveSpline(D, (16, 16), bins=K, tail_bound=B, num_masks=3, order_agnostic=True).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x, _ = _data()
    for _ in range(3):
        z, _ = layer(x)
        assert torch.allclose(layer.inverse(z), x, atol=1e-6, rtol=0)
        layer.made.next_mask()


def test_a_stack_of_spline_layers_inverts_and_adds_log_dets():
    torch.manual_seed(0)
    flow = Sequential([_layer("coupling", C, seed=1), _layer("ar", C, seed=2), _layer("coupling-flip", C, seed=3)])
    x, cond = _data(context=C)
    z, ld = flow(x, cond)
    assert torch.allclose(flow.inverse(z, cond), x, atol=1e-6, rtol=0)
    total = sum(layer(v, cond)[1] for layer, v in zip(flow.layers, _intermediates(flow, x, cond)))
    assert torch.allclose(ld, total, atol=1e-10)
    assert torch.isfinite(ld).all()


def _intermediates(flow, x, cond):
    out = []
    for layer in flow.layers:
        out.append(x)
        x = layer(x, cond)[0]
    return out
