"""Review of the autoregressive family (MADE, Gated PixelCNN, Transformer) and its text data:
edge cases the maths suite (tests/test_autoregressive.py) does not cover.

* masks: MADE's every mask set of every order, the PixelCNN's pixel order with 3 colour
  channels (no blind spot), and a mask-A kernel too small to see anything refused;
* bf16 models: exact log-likelihoods summed in float32, samples drawn without the bias of
  bf16 Gumbel ties, and sampled values on the data's own levels;
* MADE's evaluation loss is the ensemble that log_prob scores;
* the Transformer's completion and continuation run in eval mode (repeatable with a
  generator), and its prompts are checked;
* decode_text refuses ids outside the vocabulary.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deepgen
from deepgen.data.dataset import Batch, DataSpec
from deepgen.data.text import decode_text
from deepgen.errors import UserError
from deepgen.nn.masked import MADE

TRANSFORMER = {"layers": 2, "heads": 2, "width": 16}


def _perturbed(model: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Random weights far from the small initialisation, so that every connection matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


# -- masks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("d,hidden,order_agnostic", [(5, (9,), True), (6, (12, 7, 9), True), (4, (6, 6), False)])
def test_made_every_mask_set_is_autoregressive_in_its_own_order(d, hidden, order_agnostic):
    """For each of the K mask sets, output d depends on no input at or after d in that
    set's order (tanh: no unit is switched off by the activation, so the check is not vacuous)."""
    made = MADE(d, hidden, 2, num_masks=4, order_agnostic=order_agnostic, seed=3, activation=torch.nn.Tanh)
    _perturbed(made, 1.0)
    orders = {tuple(made.order(k).tolist()) for k in range(4)}
    assert (len(orders) > 1) == order_agnostic
    made = made.double()
    for k in range(4):
        x = torch.randn(1, d, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v, k=k: made(v, None, torch.tensor(k)).sum(-1), x)[0, :, 0]  # (D out, D in)
        pos = torch.empty(d, dtype=torch.long)
        pos[made.order(k)] = torch.arange(d)
        allowed = pos[None, :] < pos[:, None]
        assert not bool(((jac != 0) & ~allowed).any()), f"mask set {k} lets an output see a later input"
        assert bool((jac != 0).any())


def test_pixelcnn_with_three_channels_sees_every_earlier_pixel_and_no_later_one():
    """Raster order over pixels, a pixel's 3 channels hidden from all of its outputs; the
    pixels above and to the right are seen (the Gated PixelCNN has no blind spot)."""
    spec = DataSpec((3, 4, 5), "discrete", num_levels=4)
    torch.manual_seed(0)
    m = deepgen.create_model("pixelcnn", spec, channels=6, layers=4, out_hidden=8, kernel=3, first_kernel=3).double().eval()
    _perturbed(m, 0.5)
    x = torch.randint(0, 4, (1, *spec.shape), generator=torch.Generator().manual_seed(1)).double()
    # |d params / d x| summed over the head's parameters: (C, H, W) outputs x (C, H, W) inputs.
    jac = torch.autograd.functional.jacobian(lambda v: m.head_params(v, None), x)[0].abs().sum(0)[:, :, :, 0]
    for i in range(4):
        for j in range(5):
            dep = (jac[:, i, j] != 0).any(0).any(0)  # (H, W): the pixels the outputs at (i, j) read
            for a in range(4):
                for b in range(5):
                    before = a < i or (a == i and b < j)
                    if not before:
                        assert not bool(dep[a, b]), f"pixel {(i, j)} sees pixel {(a, b)}"
            if i >= 1 and j + 1 < 5:
                assert bool(dep[i - 1, j + 1]), f"pixel {(i, j)} misses the pixel above-right (a blind spot)"


def test_pixelcnn_mask_a_kernel_of_one_is_refused():
    """first_kernel=1 left the mask-A layer nothing to see: a model that ignored its input
    silently (its outputs' gradient w.r.t. x was zero everywhere)."""
    with pytest.raises(UserError, match="first_kernel .* >= 3"):
        deepgen.create_model("pixelcnn", DataSpec((1, 4, 4), "binary"), first_kernel=1)
    # kernel=1 for the mask-B layers still sees the earlier pixels (through the stacks).
    m = deepgen.create_model("pixelcnn", DataSpec((1, 4, 4), "binary"), channels=4, layers=2, out_hidden=4, first_kernel=3, kernel=1)
    _perturbed(m.double())
    x = torch.bernoulli(torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64))
    assert bool((torch.autograd.functional.jacobian(lambda v: m.head_params(v, None).sum(), x) != 0).any())


# -- bf16 models -----------------------------------------------------------------------------


def test_bf16_log_prob_is_summed_in_float32():
    """A bf16 model's per-token terms were summed in bf16: log p off by several nats over
    256 tokens (and rounded to multiples of 8 nats)."""
    spec = DataSpec((256,), "tokens", vocab_size=65)
    torch.manual_seed(0)
    tr = deepgen.create_model("transformer", spec, layers=1, heads=2, width=16, dropout=0.0).eval().bfloat16()
    x = torch.randint(0, 65, (3, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = -F.cross_entropy(tr.logits(x).float().transpose(1, 2), x, reduction="none").sum(1)
        got = tr.log_prob(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-3)
    img = DataSpec((1, 8, 8), "discrete", num_levels=256)
    made = deepgen.create_model("made", img, hidden=(16,)).eval().bfloat16()
    y = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        params = made._params(y, None, torch.tensor(0)).float()
        ref = -F.cross_entropy(params, y.long(), reduction="none").reshape(3, -1).sum(1)
        torch.testing.assert_close(made.log_prob(y), ref, rtol=0, atol=1e-3)
        assert made.loss(Batch(y)).loss.dtype == torch.float32


@pytest.mark.parametrize("name", ["made", "pixelcnn"])
def test_bf16_categorical_samples_are_not_biased_to_the_first_values(name):
    """Gumbel-max in bf16 ties often and argmax breaks ties to the first value: a bf16
    model with uniform outputs drew its first ids about 12% too often (chi-square ~1250 on
    63 degrees of freedom, against ~63)."""
    spec = DataSpec((1,), "tokens", vocab_size=64) if name == "made" else DataSpec((1, 1, 1), "discrete", num_levels=64)
    kw = {"hidden": (4,)} if name == "made" else {"channels": 4, "layers": 1, "out_hidden": 4, "first_kernel": 3}
    m = deepgen.create_model(name, spec, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()  # every value equally likely
    m = m.bfloat16()
    n = 100_000
    draws = m.sample(n, generator=torch.Generator().manual_seed(0)).reshape(-1).long()
    counts = torch.bincount(draws, minlength=64).double()
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 130, f"chi-square {chi2:.0f} on 63 degrees of freedom: the draws are biased"


@pytest.mark.parametrize("name,kw", [("made", {"hidden": (8,)}), ("pixelcnn", {"channels": 4, "layers": 2, "out_hidden": 4}),
                                     ("transformer", TRANSFORMER)])
def test_bf16_samples_are_on_the_datas_levels(name, kw):
    """bf16 cannot hold k / 255: a bf16 model's samples of 8-bit images came back in bf16,
    up to half a level off the data's values. Now float32, exactly k / 255."""
    spec = DataSpec((1, 3, 3), "continuous", num_levels=256)
    torch.manual_seed(0)
    m = _perturbed(deepgen.create_model(name, spec, **kw)).bfloat16().eval()
    x = m.sample(8, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(x, levels[(x * 255).round().long()])
    assert float((x * 255 - (x * 255).round()).abs().max()) == 0.0


# -- MADE's evaluation loss --------------------------------------------------------------------


def test_made_eval_loss_is_the_ensembles_nll_and_training_cycles_masks():
    """The trainer's validation loss is model.loss in eval mode. With K masks it scored
    whichever single mask training had stopped at (a figure that moved with step mod K),
    not the ensemble log_prob and sample use."""
    spec = DataSpec((5,), "binary")
    torch.manual_seed(0)
    m = _perturbed(deepgen.create_model("made", spec, hidden=(16,), num_masks=4, order_agnostic=True))
    x = torch.bernoulli(torch.full((32, 5), 0.5), generator=torch.Generator().manual_seed(0))
    m.eval()
    with torch.no_grad():
        ensemble = -m.log_prob(x).mean()
        losses = []
        for k in range(4):
            m.made.mask_index.fill_(k)
            losses.append(m.loss(Batch(x)).loss)
            assert int(m.made.mask_index) == k  # evaluation does not move the mask
    for loss in losses:
        torch.testing.assert_close(loss, ensemble)
    m.train()
    m.made.mask_index.fill_(1)
    single = m.loss(Batch(x)).loss  # training: the mask in use, then the next one
    assert int(m.made.mask_index) == 2
    with torch.no_grad():
        want = m.head.nll(m._params(x, None, torch.tensor(1)), x).mean()
    torch.testing.assert_close(single, want)


# -- the Transformer's completion and continuation ------------------------------------------------


def _transformer(spec: DataSpec, **kw) -> deepgen.GenerativeModel:
    torch.manual_seed(0)
    return _perturbed(deepgen.create_model("transformer", spec, **{**TRANSFORMER, "dropout": 0.5, **kw}))


def test_transformer_complete_and_generate_ignore_dropout_in_training_mode():
    """sample() ran in eval mode but complete() and generate_ids() did not: in training mode
    dropout (global RNG) changed the draws, so the same generator gave different texts."""
    spec = DataSpec((8,), "tokens", vocab_size=5)
    m = _transformer(spec)
    x = torch.randint(0, 5, (6, 8), generator=torch.Generator().manual_seed(0))
    known = torch.zeros(8, dtype=torch.bool)
    known[:2] = True
    m.eval()
    want_c = m.complete(x, known, generator=torch.Generator().manual_seed(0))
    want_g = m.generate_ids(x[:, :2], 20, generator=torch.Generator().manual_seed(0))
    m.train()
    for seed in (1, 2):
        torch.manual_seed(seed)  # dropout's stream differs; the generator is the same
        assert torch.equal(m.complete(x, known, generator=torch.Generator().manual_seed(0)), want_c)
        assert torch.equal(m.generate_ids(x[:, :2], 20, generator=torch.Generator().manual_seed(0)), want_g)
    assert m.training and all(mod.training for mod in m.modules())  # the mode is restored


def test_transformer_prompts_longer_than_the_context_or_empty():
    """Greedy (top_k=1) continuation: each id is the argmax given the window the sliding
    scheme reads; a prompt longer than the context T keeps all of its ids; an empty prompt
    starts from the start token."""
    spec = DataSpec((6,), "tokens", vocab_size=5, num_classes=2)
    m = _transformer(spec, conditional=True, top_k=1, dropout=0.0).eval()
    y = torch.tensor([0, 1])
    t_max = 6
    for plen in (0, 1, 6, 13):
        prompt = torch.randint(0, 5, (2, plen), generator=torch.Generator().manual_seed(plen))
        out = m.generate_ids(prompt, 20, cond=y)
        assert out.shape == (2, 20) and torch.equal(out[:, :plen], prompt)
        window = max(0, plen - (t_max - 1))
        for pos in range(plen, 20):
            if pos - window + 1 > t_max:
                window = pos - t_max // 2
            ctx = out[:, window:pos]
            padded = torch.zeros(2, t_max, dtype=torch.long)
            padded[:, : ctx.shape[1]] = ctx
            assert torch.equal(m.logits(padded, cond=y)[:, ctx.shape[1]].argmax(-1), out[:, pos]), (plen, pos)


@pytest.mark.parametrize(
    "prompt,length,match",
    [
        (torch.tensor([1, 2]), 8, r"prompt as a tensor of ids \(N, P\)"),
        (torch.tensor([[1, 7]]), 8, r"prompt ids must be in 0\.\.4"),
        (torch.tensor([[1, -1]]), 8, r"prompt ids must be in 0\.\.4"),
        (torch.tensor([[1.7, 2.2]]), 8, "integer ids 0..4; got a torch.float32"),
        (torch.tensor([[1, 2, 3]]), 2, r"whole number >= 3; got 2"),
        (torch.tensor([[1, 2]]), -1, r"whole number >= 2; got -1"),
        (torch.tensor([[1, 2]]), 4.0, r"whole number >= 2; got 4.0"),
    ],
)
def test_transformer_generate_ids_refuses_bad_prompts(prompt, length, match):
    """Before: an unpacking ValueError, an embedding IndexError, a float prompt truncated to
    ids, and a length below the prompt's cutting the prompt short silently."""
    m = _transformer(DataSpec((6,), "tokens", vocab_size=5)).eval()
    with pytest.raises(UserError, match=match):
        m.generate_ids(prompt, length)


def test_kv_cache_overflow_is_a_clear_error():
    """Writing past the cache's end was a shape-mismatch error from a cut-short slice."""
    from deepgen.nn.transformer import Block, KVCache

    block = Block(8, 2).eval()
    cache = KVCache(1, 2, 2, 4, 4, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        block(torch.randn(2, 3, 8), cache, 0, 0)  # positions 0..2 fit
        with pytest.raises(ValueError, match="positions 2..4 of 2 sequences do not fit a cache of 4 positions"):
            block(torch.randn(2, 3, 8), cache, 0, 2)
        with pytest.raises(ValueError, match="for 2 sequences"):
            block(torch.randn(3, 1, 8), cache, 0, 0)


# -- text --------------------------------------------------------------------------------------


def test_decode_text_refuses_ids_outside_the_vocabulary():
    """A negative id indexed the vocabulary from its end (a wrong character, silently)."""
    assert decode_text(torch.tensor([0, 2, 1]), "abc") == "acb"
    for bad in ([0, -1], [3], [1.5]):
        with pytest.raises(UserError, match=r"accepted: whole numbers 0\.\.2"):
            decode_text(torch.tensor(bad), "abc")
