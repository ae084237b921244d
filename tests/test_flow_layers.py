"""The maths of the flow layers (deepgen.nn.flows), in float64 on small inputs with random,
non-trivial weights (every parameter perturbed, the zero-initialised ones included):

* each layer and stacks of them invert exactly both ways;
* log_det equals log |det J| of autograd's Jacobian, example by example;
* the masks keep what they say, the networks start at the identity, the context is used;
* ActNorm's data-dependent initialisation and its flag in the state_dict;
* log-determinants stay float32 under bf16 autocast;
* Squeeze's layout and its refusal of odd sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from helpers import perturb as _perturb
from torch import nn
from torch.autograd.functional import jacobian

from deepgen.nn import flows as fl

N = 3  # examples per batch
COND = 3  # context width of the conditional cases
NOISE = 0.3  # std of the noise added to every parameter


def perturb(module: nn.Module, std: float = NOISE, seed: int = 0) -> nn.Module:
    """:func:`helpers.perturb` with this file's noise level."""
    return _perturb(module, std, seed)


def sequential_vector(cond: int) -> fl.Bijection:
    return fl.Sequential([
        fl.ActNorm(5),
        fl.LULinear(5),
        fl.AffineCoupling((5,), "half", False, (8, 8), cond),
        fl.MaskedAffineAutoregressive(5, (12,), cond),
        fl.Reverse(),
        fl.Permutation(5, seed=1),
        fl.AffineCoupling((5,), "half", True, 8, cond),
        fl.MaskedAffineAutoregressive(5, (12, 12), cond, seed=1),
        fl.InvConv1x1(5, lu=False),
    ])


def sequential_image(cond: int) -> fl.Bijection:
    return fl.Sequential([
        fl.Logit(0.05),
        fl.ActNorm(2, image=True),
        fl.InvConv1x1(2),
        fl.AffineCoupling((2, 4, 4), "checkerboard", False, 6, cond),
        fl.AffineCoupling((2, 4, 4), "checkerboard", True, 6, cond),
        fl.Squeeze(),
        fl.ActNorm(8, image=True),
        fl.InvConv1x1(8),
        fl.AffineCoupling((8, 2, 2), "channel", False, 6, cond),
        fl.AffineCoupling((8, 2, 2), "channel", True, 6, cond),
        fl.Permutation(8, seed=2),
        fl.Reverse(),
    ])


# name -> (builder, input shape per example, context width, input kind: "real" or "unit" for [0, 1))
CASES: dict[str, tuple[Callable[[], fl.Bijection], tuple[int, ...], int, str]] = {
    "actnorm-vector": (lambda: fl.ActNorm(5, image=False), (5,), 0, "real"),
    "actnorm-image": (lambda: fl.ActNorm(2, image=True), (2, 4, 4), 0, "real"),
    "invconv-vector": (lambda: fl.InvConv1x1(5), (5,), 0, "real"),
    "lulinear": (lambda: fl.LULinear(5), (5,), 0, "real"),
    "invconv-image": (lambda: fl.InvConv1x1(4), (4, 4, 4), 0, "real"),
    "invconv-image-nolu": (lambda: fl.InvConv1x1(4, lu=False), (4, 4, 4), 0, "real"),
    "coupling-half": (lambda: fl.AffineCoupling((5,), "half", False, (8, 8)), (5,), 0, "real"),
    "coupling-half-flip-cond": (lambda: fl.AffineCoupling((5,), "half", True, (8,), COND), (5,), COND, "real"),
    "coupling-checker": (lambda: fl.AffineCoupling((2, 4, 4), "checkerboard", False, 8), (2, 4, 4), 0, "real"),
    "coupling-checker-odd-cond": (lambda: fl.AffineCoupling((2, 4, 4), "checkerboard", True, 8, COND), (2, 4, 4), COND, "real"),
    "coupling-checker-resnet": (lambda: fl.AffineCoupling((2, 4, 4), "checkerboard", False, 8, blocks=2), (2, 4, 4), 0, "real"),
    "coupling-channel": (lambda: fl.AffineCoupling((4, 4, 4), "channel", False, 8), (4, 4, 4), 0, "real"),
    "coupling-channel-resnet-cond": (lambda: fl.AffineCoupling((4, 4, 4), "channel", True, 8, COND, blocks=1), (4, 4, 4), COND, "real"),
    "coupling-channel-flip-cond": (lambda: fl.AffineCoupling((4, 4, 4), "channel", True, 8, COND), (4, 4, 4), COND, "real"),
    "squeeze": (lambda: fl.Squeeze(), (2, 4, 4), 0, "real"),
    "permutation-vector": (lambda: fl.Permutation(5, seed=3), (5,), 0, "real"),
    "permutation-image": (lambda: fl.Permutation(4, seed=3), (4, 4, 4), 0, "real"),
    "reverse-vector": (lambda: fl.Reverse(), (5,), 0, "real"),
    "reverse-image": (lambda: fl.Reverse(), (4, 4, 4), 0, "real"),
    "maf": (lambda: fl.MaskedAffineAutoregressive(5, (16, 16)), (5,), 0, "real"),
    "maf-cond": (lambda: fl.MaskedAffineAutoregressive(5, 16, COND, seed=4), (5,), COND, "real"),
    "logit-vector": (lambda: fl.Logit(0.05), (5,), 0, "unit"),
    "logit-image": (lambda: fl.Logit(0.1), (2, 4, 4), 0, "unit"),
    "sequential-vector": (lambda: sequential_vector(0), (5,), 0, "real"),
    "sequential-vector-cond": (lambda: sequential_vector(COND), (5,), COND, "real"),
    "sequential-image": (lambda: sequential_image(0), (2, 4, 4), 0, "unit"),
    "sequential-image-cond": (lambda: sequential_image(COND), (2, 4, 4), COND, "unit"),
}


def build(name: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """(module perturbed and in eval mode, x (N, *shape), cond (N, COND) or None)."""
    builder, shape, cond_dim, kind = CASES[name]
    torch.manual_seed(seed)
    module = perturb(builder()).to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "unit":
        x = torch.rand((N, *shape), generator=g, dtype=dtype) * 0.98 + 0.01
    else:
        x = torch.randn((N, *shape), generator=g, dtype=dtype) * 1.5 + 0.3
    cond = torch.randn((N, cond_dim), generator=g, dtype=dtype) if cond_dim else None
    return module, x, cond


def has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


# -- (a) exact inverses -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_both_ways(name):
    module, x, cond = build(name)
    z, log_det = module(x, cond)
    assert log_det.shape == (N,) and log_det.dtype == torch.float64
    assert z.dtype == torch.float64 and z[0].numel() == x[0].numel()
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    if z.shape == x.shape:  # the weights are not trivial: the layer moves x
        assert (z - x).abs().max() > 1e-2
    torch.testing.assert_close(module.inverse(z, cond), x, rtol=1e-6, atol=1e-6)

    g = torch.Generator().manual_seed(7)
    noise = torch.randn(z.shape, generator=g, dtype=torch.float64)
    # A random stack behind a logit is far from well conditioned: its inverse at a random z
    # lands deep in the logit's tails, where sigmoid rounds to 1. Stay near the data's image.
    z0 = z.detach() + 0.03 * noise if CASES[name][3] == "unit" and name.startswith("sequential") else noise
    x0 = module.inverse(z0, cond)
    z1, _ = module(x0, cond)
    torch.testing.assert_close(z1, z0, rtol=1e-6, atol=1e-6)


# -- (b) log-determinants against autograd's Jacobian ----------------------------------------------------


def log_abs_det_jacobian(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """log |det df/dx| of one example x (*shape), the output flattened."""
    jac = jacobian(lambda v: f(v).reshape(-1), x, vectorize=True).reshape(x.numel(), x.numel())
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    return logabs


@pytest.mark.parametrize("name", list(CASES))
def test_log_det_matches_autograd_jacobian(name):
    module, x, cond = build(name)
    z, log_det = module(x, cond)
    for i in range(N):
        ci = None if cond is None else cond[i : i + 1]
        forward = log_abs_det_jacobian(lambda v, ci=ci: module(v[None], ci)[0], x[i])
        torch.testing.assert_close(log_det[i], forward, rtol=1e-7, atol=1e-7)
        # the inverse's Jacobian at z has log |det| = -log_det
        inverse = log_abs_det_jacobian(lambda v, ci=ci: module.inverse(v[None], ci), z[i])
        torch.testing.assert_close(-log_det[i], inverse, rtol=1e-7, atol=1e-7)


def test_maf_jacobian_is_triangular_in_its_order():
    module, x, cond = build("maf-cond")
    for i in range(N):
        jac = jacobian(lambda v, i=i: module(v[None], cond[i : i + 1])[0][0], x[i])
        assert torch.equal(torch.triu(jac, 1), torch.zeros_like(jac))  # z_d ignores x_j for j > d
        assert (torch.tril(jac, -1).abs() > 0).any()  # and does use the earlier ones


@pytest.mark.parametrize("name", [n for n in CASES if has_params(CASES[n][0]())])
def test_every_parameter_gets_a_gradient(name):
    module, x, cond = build(name)
    z, log_det = module(x, cond)
    (z.pow(2).sum() - log_det.sum()).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"


# -- masks, identity at initialisation, the context -----------------------------------------------------------


@pytest.mark.parametrize(
    "shape,mask,flip,kept",
    [
        ((5,), "half", False, (slice(None), slice(0, 2))),
        ((5,), "half", True, (slice(None), slice(2, 5))),
        ((4, 4, 4), "channel", False, (slice(None), slice(0, 2))),
        ((4, 4, 4), "channel", True, (slice(None), slice(2, 4))),
        ((3, 4, 4), "channel", True, (slice(None), slice(1, 3))),
    ],
)
def test_split_masks_keep_their_part(shape, mask, flip, kept):
    torch.manual_seed(0)
    layer = perturb(fl.AffineCoupling(shape, mask, flip, 8)).double()
    x = torch.randn(N, *shape, dtype=torch.float64)
    z, _ = layer(x)
    assert torch.equal(z[kept], x[kept])
    changed = torch.ones_like(x, dtype=torch.bool)
    changed[kept] = False
    assert ((z - x).abs()[changed] > 0).all()


@pytest.mark.parametrize("flip", [False, True])
def test_checkerboard_parity(flip):
    torch.manual_seed(0)
    layer = perturb(fl.AffineCoupling((2, 4, 4), "checkerboard", flip, 8)).double()
    x = torch.randn(N, 2, 4, 4, dtype=torch.float64)
    z, _ = layer(x)
    hh, ww = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    keep = ((hh + ww) % 2 == int(flip)).expand(N, 2, 4, 4)  # flip=False keeps the (h + w) even pixels
    assert torch.equal(z[keep], x[keep])
    assert ((z - x).abs()[~keep] > 0).all()


@pytest.mark.parametrize("shape,mask", [((5,), "half"), ((2, 4, 4), "checkerboard"), ((4, 4, 4), "channel")])
def test_alternating_couplings_transform_everything(shape, mask):
    torch.manual_seed(0)
    pair = perturb(fl.Sequential([fl.AffineCoupling(shape, mask, False, 8), fl.AffineCoupling(shape, mask, True, 8)])).double()
    x = torch.randn(N, *shape, dtype=torch.float64)
    assert ((pair(x)[0] - x).abs() > 0).all()


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: fl.AffineCoupling((5,), "half", False, (8,), COND), (5,)),
        (lambda: fl.AffineCoupling((2, 4, 4), "checkerboard", False, 8, COND), (2, 4, 4)),
        (lambda: fl.AffineCoupling((4, 4, 4), "channel", True, 8, COND), (4, 4, 4)),
        (lambda: fl.AffineCoupling((4, 4, 4), "channel", True, 8, COND, blocks=2), (4, 4, 4)),
        (lambda: fl.MaskedAffineAutoregressive(5, (16,), COND), (5,)),
    ],
)
def test_networks_start_at_the_identity_and_use_the_context(make, shape):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(N, *shape, dtype=torch.float64)
    c = torch.randn(N, COND, dtype=torch.float64)
    z, log_det = layer(x, c)
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(N, dtype=torch.float64))
    perturb(layer)
    z1, ld1 = layer(x, c)
    z2, ld2 = layer(x, c + 1.0)
    assert (z1 - z2).abs().max() > 1e-3 and (ld1 - ld2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cond"):
        layer(x)
    with pytest.raises(ValueError, match="cond"):
        layer.inverse(x)


def test_unconditional_layers_ignore_a_context():
    module, x, _ = build("sequential-vector")
    z, ld = module(x)
    z_c, ld_c = module(x, torch.randn(N, COND, dtype=torch.float64))
    assert torch.equal(z, z_c) and torch.equal(ld, ld_c)


def test_net_factory_replaces_the_network():
    calls = []

    class Net(nn.Module):
        def __init__(self, i: int, o: int, c: int) -> None:
            super().__init__()
            calls.append((i, o, c))
            self.lin = nn.Linear(i + c, o)

        def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
            return self.lin(torch.cat([h, cond], dim=1))

    torch.manual_seed(0)
    layer = fl.AffineCoupling((5,), "half", True, cond_dim=2, net_factory=Net).double()
    assert calls == [(3, 4, 2)]  # flip: the last 3 features are kept, the first 2 transformed (s and t)
    x, c = torch.randn(N, 5, dtype=torch.float64), torch.randn(N, 2, dtype=torch.float64)
    z, log_det = layer(x, c)
    torch.testing.assert_close(layer.inverse(z, c), x)
    torch.testing.assert_close(log_det[0], log_abs_det_jacobian(lambda v: layer(v[None], c[:1])[0], x[0]))


def test_invconv_starts_as_a_seeded_rotation():
    for lu in (True, False):
        torch.manual_seed(5)
        a = fl.InvConv1x1(6, lu=lu)
        torch.manual_seed(5)
        b = fl.InvConv1x1(6, lu=lu)
        w = a.matrix(torch.float64)
        torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
        torch.testing.assert_close(a.matrix(), b.matrix())
        assert abs(float(a.log_abs_det().detach())) < 1e-5
    torch.manual_seed(6)
    assert not torch.allclose(fl.InvConv1x1(6).matrix(), a.matrix())


def test_permutation_state_dict_round_trip():
    a, b = fl.Permutation(7, seed=0), fl.Permutation(7, seed=1)
    assert not torch.equal(a.perm, b.perm)
    b.load_state_dict(a.state_dict())
    x = torch.randn(N, 7)
    assert torch.equal(b(x)[0], a(x)[0])
    assert torch.equal(b.inverse(a(x)[0]), x)


def test_logit_log_det_includes_the_alpha_factor():
    alpha = 0.05
    x = torch.full((N, 5), 0.5, dtype=torch.float64)  # p = 0.5: dy/dx = (1 - 2 alpha) / (p (1 - p))
    y, log_det = fl.Logit(alpha)(x)
    assert torch.equal(y, torch.zeros_like(y))
    torch.testing.assert_close(log_det, torch.full((N,), 5 * math.log(4 * (1 - 2 * alpha)), dtype=torch.float64))
    ends = torch.tensor([[math.log(alpha / (1 - alpha)), math.log((1 - alpha) / alpha)]], dtype=torch.float64)
    torch.testing.assert_close(fl.Logit(alpha).inverse(ends), torch.tensor([[0.0, 1.0]], dtype=torch.float64))  # logit(alpha) <-> 0
    with pytest.raises(ValueError):
        fl.Logit(0.5)


# -- (c) ActNorm's data-dependent initialisation ---------------------------------------------------------


def skewed(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    scale = torch.linspace(0.2, 5.0, c).view(1, c, *([1] * (len(shape) - 2)))
    shift = torch.linspace(-3.0, 4.0, c).view(1, c, *([1] * (len(shape) - 2)))
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift


@pytest.mark.parametrize("image,shape,dims", [(True, (16, 3, 4, 4), (0, 2, 3)), (False, (64, 4), (0,))])
def test_actnorm_initialises_on_its_first_training_batch(image, shape, dims):
    layer = fl.ActNorm(shape[1], image=image).double().train()
    assert not bool(layer.initialized)
    x = skewed(shape, 0)
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean(dim=dims), torch.zeros(shape[1], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(dim=dims, unbiased=False), torch.ones(shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    assert bool(layer.initialized)
    pixels = math.prod(shape[2:])
    torch.testing.assert_close(log_det, torch.full((shape[0],), pixels * float(layer.log_scale.detach().sum()), dtype=torch.float64))

    # a second batch does not initialise again
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(skewed(shape, 1))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k

    # the flag travels in the state_dict: a loaded module does not initialise again
    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = fl.ActNorm(shape[1], image=image).double().train()
    fresh(skewed(shape, 2))  # initialises on another batch first
    fresh.load_state_dict(state)
    other = skewed(shape, 3) * 7.0
    z_loaded, _ = fresh(other)
    assert torch.equal(fresh.bias, layer.bias) and torch.equal(fresh.log_scale, layer.log_scale)
    torch.testing.assert_close(z_loaded, layer(other)[0])


def test_actnorm_reset_and_eval_mode():
    shape = (32, 3)
    layer = fl.ActNorm(3).double().eval()
    x = skewed(shape, 0)
    z, log_det = layer(x)  # eval mode: never initialises, the identity while uninitialised
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(32, dtype=torch.float64))
    assert not bool(layer.initialized)

    layer.train()
    layer(x)
    assert bool(layer.initialized)
    bias = layer.bias.detach().clone()
    layer.initialized.fill_(False)  # what a model's data_init may do: the next training forward initialises
    y = skewed(shape, 1) * 3.0
    z, _ = layer(y)
    assert not torch.equal(layer.bias, bias)
    torch.testing.assert_close(z.std(dim=0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)

    layer.load_state_dict(fl.ActNorm(3).double().state_dict())  # an uninitialised state: initialise again
    assert not bool(layer.initialized)
    layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(layer(x)[0].mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_actnorm_initialises_a_whole_stack_in_one_training_pass():
    torch.manual_seed(0)
    flow = perturb(fl.Sequential([fl.ActNorm(2, image=True), fl.InvConv1x1(2), fl.Squeeze(), fl.ActNorm(8, image=True)])).double()
    with torch.no_grad():
        flow.train()(skewed((16, 2, 4, 4), 0))
    flow.eval()
    z, _ = flow(skewed((16, 2, 4, 4), 0))
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(8, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-5, rtol=0)


# -- (d) bf16 autocast -------------------------------------------------------------------------------------


EXACT_UNDER_AUTOCAST = {n for n in CASES if n.split("-")[0] in ("actnorm", "invconv", "lulinear", "squeeze", "permutation", "reverse", "logit")}


@pytest.mark.parametrize("name", list(CASES))
def test_log_det_is_float32_under_bf16_autocast(name):
    module, x, cond = build(name, dtype=torch.float32)
    net_dtypes = []
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_forward_hook(lambda _m, _i, out: net_dtypes.append(out.dtype))
    z32, ld32 = module(x, cond)
    net_dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, log_det = module(x, cond)
        x_back = module.inverse(z, cond)
        _, ld_bf16_input = module(x.to(torch.bfloat16), None if cond is None else cond.to(torch.bfloat16))
    assert log_det.dtype == torch.float32 and ld_bf16_input.dtype == torch.float32
    assert z.dtype == torch.float32 and x_back.dtype == torch.float32
    assert all(d == torch.bfloat16 for d in net_dtypes)  # the networks did run in bf16
    if name in EXACT_UNDER_AUTOCAST:  # no network: the same figures as without autocast
        torch.testing.assert_close(log_det, ld32)
        torch.testing.assert_close(z, z32)
        torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
    else:  # bf16 networks: close, not equal
        torch.testing.assert_close(log_det, ld32, rtol=0.05, atol=0.5)


# -- (e) Squeeze ------------------------------------------------------------------------------------------


def test_squeeze_layout():
    x = torch.randn(2, 3, 4, 6)
    z, log_det = fl.Squeeze()(x)
    assert z.shape == (2, 12, 2, 3) and torch.equal(log_det, torch.zeros(2))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(fl.Squeeze().inverse(z), x)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (2, 3, 4, 5), (2, 1, 3, 3)])
def test_squeeze_refuses_odd_sizes(shape):
    with pytest.raises(ValueError, match="even height and width"):
        fl.Squeeze()(torch.zeros(shape))


def test_shape_errors():
    with pytest.raises(ValueError, match="images"):
        fl.Squeeze()(torch.zeros(2, 4))
    with pytest.raises(ValueError):
        fl.ActNorm(3, image=True)(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        fl.InvConv1x1(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="does not fit"):
        fl.AffineCoupling((5,), "checkerboard")
    with pytest.raises(ValueError, match="does not fit"):
        fl.AffineCoupling((2, 4, 4), "half")
    with pytest.raises(ValueError, match="unknown coupling mask"):
        fl.AffineCoupling((5,), "halves")
    with pytest.raises(ValueError, match="at least 2"):
        fl.AffineCoupling((1, 4, 4), "channel")
    with pytest.raises(ValueError, match="does not apply to vectors"):
        fl.AffineCoupling((5,), "half", blocks=1)
    with pytest.raises(ValueError, match="blocks must be >= 0"):
        fl.AffineCoupling((4, 4, 4), "channel", blocks=-1)
    with pytest.raises(ValueError):
        fl.AffineCoupling((5,), "half")(torch.zeros(2, 6))
    with pytest.raises(ValueError):
        fl.MaskedAffineAutoregressive(5, 8)(torch.zeros(2, 4))
