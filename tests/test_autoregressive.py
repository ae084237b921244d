"""Maths of the autoregressive family (MADE, Gated PixelCNN, Transformer), with random weights.

* On tiny discrete spaces (3 binary pixels, a 3-value vocabulary of length 3, 4 levels
  quantised to 2 bins) every model's probabilities sum to 1, unconditional and per class,
  and MADE's mask ensemble too.
* Sampling draws from those probabilities (empirical frequencies of many draws).
* The output at position i ignores later positions, cached decoding equals uncached and
  completion keeps the known positions (the capability checks, for every data kind).
* Training lowers the NLL; the Transformer's sliding-window generation continues a prompt.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from capability_checks import CHECKS

import deepgen
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError

TINY = {
    "made": {"hidden": (16, 16)},
    "pixelcnn": {"channels": 8, "layers": 3, "out_hidden": 8, "first_kernel": 3},
    "transformer": {"layers": 2, "heads": 2, "width": 16, "dropout": 0.0},
}


def _space(spec: DataSpec) -> torch.Tensor:
    """Every example of a tiny discrete spec, (V^D, *shape) in model space."""
    if spec.kind == "tokens":
        values = list(range(spec.vocab_size))
    elif spec.kind == "binary":
        values = [0.0, 1.0]
    else:
        values = [k / (spec.num_levels - 1) for k in range(spec.num_levels)]
    rows = list(itertools.product(values, repeat=spec.dim))
    dtype = torch.long if spec.kind == "tokens" else torch.float32
    return torch.tensor(rows, dtype=dtype).reshape(-1, *spec.shape)


def _model(name: str, spec: DataSpec, seed: int = 0, **kw) -> deepgen.GenerativeModel:
    torch.manual_seed(seed)
    model = deepgen.create_model(name, spec, **{**TINY[name], **kw})
    # Random, non-trivial weights (not the small GPT init), so the distributions are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


CASES = [
    ("made", DataSpec((3,), "binary"), {}),
    ("made", DataSpec((3,), "tokens", vocab_size=3), {}),
    ("made", DataSpec((1, 1, 3), "continuous", num_levels=3), {}),
    ("pixelcnn", DataSpec((1, 1, 3), "binary"), {}),
    ("pixelcnn", DataSpec((2, 1, 2), "continuous", num_levels=3), {}),
    ("pixelcnn", DataSpec((1, 1, 2), "continuous", num_levels=4), {"likelihood": "logistic-mixture", "components": 2}),
    ("transformer", DataSpec((3,), "tokens", vocab_size=3), {}),
    ("transformer", DataSpec((1, 1, 3), "binary"), {}),
    ("transformer", DataSpec((1, 1, 2), "continuous", num_levels=4), {"levels": 2}),
]
IDS = [f"{n}-{s.kind}-{'x'.join(map(str, s.shape))}" + ("-" + "-".join(map(str, kw.values())) if kw else "") for n, s, kw in CASES]


@pytest.mark.parametrize("name,spec,kw", CASES, ids=IDS)
def test_probabilities_sum_to_one(name, spec, kw):
    model = _model(name, spec, **kw)
    grid = _space(spec)
    with torch.no_grad():
        total = model.log_prob(grid).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)
    # ... and are not uniform (the test would be vacuous for a constant model).
    with torch.no_grad():
        lp = model.log_prob(grid)
    assert float(lp.max() - lp.min()) > 0.1


@pytest.mark.parametrize("name", ["made", "pixelcnn", "transformer"])
def test_conditional_probabilities_sum_to_one_per_class(name):
    spec = DataSpec((1, 1, 3), "binary", num_classes=3)
    model = _model(name, spec, conditional=True)
    grid = _space(spec)
    sums = []
    with torch.no_grad():
        for c in range(3):
            sums.append(model.log_prob(grid, cond=torch.full((len(grid),), c)).double().exp().sum().item())
        per_class = [model.log_prob(grid, cond=torch.full((len(grid),), c)) for c in range(3)]
    assert sums == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert float((per_class[0] - per_class[1]).abs().max()) > 1e-3  # the label changes the distribution
    with pytest.raises(UserError, match="pass labels"):
        model.log_prob(grid)


def test_made_mask_ensemble_is_a_normalised_mixture_and_masks_cycle():
    spec = DataSpec((4,), "binary")
    model = _model("made", spec, num_masks=4, order_agnostic=True)
    grid = _space(spec)
    with torch.no_grad():
        assert model.log_prob(grid).double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    orders = {tuple(model.made.order(k).tolist()) for k in range(4)}
    assert len(orders) > 1  # order-agnostic: other orders than the identity
    model.train()
    x = (torch.rand(8, 4) < 0.5).float()
    seen = []
    for _ in range(5):
        seen.append(int(model.made.mask_index))
        model.loss(Batch(x), "main")
    assert seen == [0, 1, 2, 3, 0]
    assert model.likelihood_info().note == "exact (ensemble of 4 masks)"


@pytest.mark.parametrize(
    "name,spec,kw",
    [CASES[0], CASES[1], CASES[4], CASES[6], CASES[8], ("made", DataSpec((3,), "binary"), {"num_masks": 3, "order_agnostic": True})],
    ids=["made-binary", "made-tokens", "pixelcnn-levels", "transformer-tokens", "transformer-bins", "made-ensemble"],
)
def test_samples_follow_the_probabilities(name, spec, kw):
    model = _model(name, spec, **kw)
    grid = _space(spec)
    with torch.no_grad():
        p = model.log_prob(grid).double().exp()
        draws = model.sample(6000, generator=torch.Generator().manual_seed(1))
    flat_grid = grid.reshape(len(grid), -1).double()
    flat = draws.reshape(len(draws), -1).double()
    idx = (flat[:, None, :] == flat_grid[None]).all(dim=2).double().argmax(dim=1)  # which grid point each draw is
    assert bool(((flat[:, None, :] == flat_grid[None]).all(dim=2)).any(dim=1).all()), "a draw outside the space"
    freq = torch.bincount(idx, minlength=len(grid)).double() / len(draws)
    # 4 standard errors of a binomial proportion, plus a little slack.
    tol = 4 * torch.sqrt(p * (1 - p) / len(draws)) + 2e-3
    assert bool(((freq - p).abs() <= tol).all()), f"frequencies {freq.tolist()} vs probabilities {p.tolist()}"


@pytest.mark.parametrize("name,spec,kw", CASES, ids=IDS)
def test_capabilities_on_every_kind(name, spec, kw):
    model = _model(name, spec, **kw)
    x = _space(spec)[torch.randperm(len(_space(spec)), generator=torch.Generator().manual_seed(0))[:5]]
    caps = model.capabilities()
    assert {"log_prob", "autoregressive", "complete"} <= set(caps)
    for cap in caps:
        CHECKS[cap](model, x, None)


def test_transformer_cache_on_a_longer_sequence_and_prompts():
    spec = DataSpec((24,), "tokens", vocab_size=7)
    model = _model("transformer", spec)
    x = torch.randint(0, 7, (3, 24), generator=torch.Generator().manual_seed(0))
    CHECKS["cached_decoding"](model, x, None)
    # Completion given a prefix keeps it, and the continuation is the model's greedy one at top_k=1.
    greedy = deepgen.create_model("transformer", spec, **TINY["transformer"], top_k=1)
    greedy.load_state_dict(model.state_dict())
    greedy.eval()
    known = torch.zeros(24, dtype=torch.bool)
    known[:5] = True
    done = greedy.complete(x, known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(done[:, :5], x[:, :5])
    logits = greedy.logits(done)
    assert torch.equal(done[:, 5:], logits[:, 5:].argmax(-1))  # each id the argmax given the ones before
    # generate_ids() past the context T = 24 by its sliding window; its first T ids equal complete()'s.
    long = greedy.generate_ids(x[:, :5], 60, generator=torch.Generator().manual_seed(0))
    assert long.shape == (3, 60) and torch.equal(long[:, :24], done)
    assert int(long.max()) < 7 and int(long.min()) >= 0


def test_training_lowers_the_nll_for_each_model():
    torch.manual_seed(0)
    protos = (torch.rand(4, 1, 4, 4) < 0.5).float()
    x = protos[torch.randint(0, 4, (256,))]
    x = torch.where(torch.rand_like(x) < 0.05, 1 - x, x)
    spec = DataSpec((1, 4, 4), "binary")
    for name in ("made", "pixelcnn", "transformer"):
        torch.manual_seed(0)
        model = deepgen.create_model(name, spec, **TINY[name])
        (phase,) = model.phases()
        opt = torch.optim.Adam(phase.parameters, lr=1e-2)
        with torch.no_grad():
            before = -model.log_prob(x).mean().item()
        for _ in range(150):
            out = model.loss(Batch(x[torch.randint(0, 256, (64,))]), "main")
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            after = -model.log_prob(x).mean().item()
        assert after < before - 3.0, f"{name}: NLL {before:.2f} -> {after:.2f}"
        assert after < 16 * math.log(2) * 0.6  # far below a uniform model's 11.1 nats


def test_mistakes_are_user_errors():
    with pytest.raises(UserError, match="pixelcnn models images"):
        deepgen.create_model("pixelcnn", DataSpec((5,), "binary"))
    with pytest.raises(UserError, match="without quantisation levels"):
        deepgen.create_model("made", DataSpec((4,), "continuous"))
    with pytest.raises(UserError, match="levels=3 must divide"):
        deepgen.create_model("transformer", DataSpec((1, 2, 2), "continuous", num_levels=256), levels=3)
    with pytest.raises(UserError, match="holds real"):
        deepgen.create_model("transformer", DataSpec((4,), "real"))
    with pytest.raises(UserError, match="not a probability of discrete values"):
        deepgen.create_model("made", DataSpec((1, 2, 2), "continuous", num_levels=256), likelihood="bernoulli")
    model = _model("pixelcnn", DataSpec((1, 1, 2), "continuous", num_levels=4), likelihood="logistic-mixture", temperature=0.5)
    with pytest.raises(UserError, match="temperature and top_k apply"):
        model.sample(2)


@pytest.mark.parametrize(
    "spec, kw",
    [
        (DataSpec((1, 6, 5), "binary"), {}),
        (DataSpec((3, 5, 4), "discrete", num_levels=8), {"likelihood": "logistic-mixture"}),
        (DataSpec((2, 4, 4), "discrete", num_levels=4, num_classes=3), {"conditional": True, "kernel": 5, "first_kernel": 3}),
    ],
)
def test_pixelcnn_cached_sampler_gives_the_networks_outputs(spec, kw):
    """Ramachandran et al.'s cached pass computes, pixel by pixel, exactly the head
    parameters of the full network (random weights large enough that every layer matters),
    and completion through it leaves the known pixels unchanged."""
    torch.manual_seed(0)
    m = deepgen.create_model("pixelcnn", spec, channels=8, layers=3, out_hidden=8, **kw).double().eval()
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    cond = torch.tensor([0, 1, 2, 1]) if kw.get("conditional") else None
    x = m.sample(4, cond=cond, generator=torch.Generator().manual_seed(1))
    full = m.head_params(x, m.one_hot(cond, 4))
    cached = m.cached_head_params(x, cond=cond)
    assert full.abs().max() > 0.1
    torch.testing.assert_close(cached, full, rtol=1e-10, atol=1e-10)
    known = torch.zeros_like(x, dtype=torch.bool)
    known[..., : spec.shape[1] // 2, :] = True
    known[0] = True  # one example entirely known
    y = m.complete(x, known, cond=cond, generator=torch.Generator().manual_seed(2))
    assert torch.equal(y[known], x[known])
    assert torch.equal(y[0], x[0])


def test_transformer_fixed_shape_decoding_step_gives_the_logits():
    """The step a CUDA graph captures (the position a device tensor, attention over the
    whole cache under a mask) gives the full network's logits at every position, prefilled
    or stepped, with class-conditional start embeddings."""
    spec = DataSpec((10,), "tokens", vocab_size=5, num_classes=2)
    model = _model("transformer", spec, conditional=True)
    model.eval()
    x = torch.randint(0, 5, (3, 10), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1])
    full = model.logits(x, cond=y)
    first = model._starts(y, 3)
    step = model.decoder(first)
    assert step.graph is None  # eager off CUDA
    inp = torch.cat([x.new_zeros(3, 1), x[:, :-1]], dim=1)
    prefix = model._cached_step(step.cache, inp[:, :4], 0, first)  # positions 0..3 in one pass
    torch.testing.assert_close(prefix, full[:, :4], rtol=1e-5, atol=1e-5)
    for t in range(4, 10):
        torch.testing.assert_close(step(x[:, t - 1 : t], t), full[:, t], rtol=1e-5, atol=1e-5)
    # Stepping from position 0 (the start embedding through torch.where) as well.
    fresh = model.decoder(first)
    for t in range(10):
        torch.testing.assert_close(fresh(inp[:, t : t + 1], t), full[:, t], rtol=1e-5, atol=1e-5)


def test_transformer_samples_under_autocast():
    """bf16 autocast around sampling: the cache keeps the model's dtype (keys and values are
    cast as they are written)."""
    model = _model("transformer", DataSpec((6,), "tokens", vocab_size=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (3, 6) and int(ids.max()) < 4


def test_pixelcnn_dropout_keeps_the_order_in_training_and_is_off_in_evaluation():
    """Dropout in the gated layers is elementwise: in training mode (random masks) output i
    still has zero gradient w.r.t. inputs at positions >= i; in eval mode it is off (two
    passes agree, and match a dropout-free copy of the same weights)."""
    spec = DataSpec((1, 5, 5), "binary")
    torch.manual_seed(0)
    model = deepgen.create_model("pixelcnn", spec, channels=8, layers=3, out_hidden=8, dropout=0.5)
    x = torch.bernoulli(torch.full((3, 1, 5, 5), 0.5))
    model.train()
    CHECKS["autoregressive"](model, x, None)
    a, b = model.position_outputs(x), model.position_outputs(x)
    assert not torch.equal(a, b)  # dropout is on in training
    model.eval()
    plain = deepgen.create_model("pixelcnn", spec, channels=8, layers=3, out_hidden=8)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model.position_outputs(x), model.position_outputs(x))
        assert torch.allclose(model.position_outputs(x), plain.position_outputs(x))
    with pytest.raises(UserError, match="dropout must be in"):
        deepgen.create_model("pixelcnn", spec, dropout=1.0)
