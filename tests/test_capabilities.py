"""Capability conformance: every registered model is checked for every optional capability
it declares (tests/capability_checks.py), on every data kind and variant it declares, and
conditional families once more with labels (all passed as ``cond=``).

The capabilities no registered family has yet (an invertible map, autoregressive outputs,
cached decoding, completion, data-dependent init) are exercised on small reference models
defined here, and each check is shown to reject a model that breaks its promise, so the
checks are ready for the flow, autoregressive and diffusion families to plug in.

Cost: no training, one small batch per case; the whole file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from capability_checks import (
    CHECKS,
    check_autoregressive,
    check_cached_decoding,
    check_complete,
    check_invertible,
    check_log_prob,
)
from test_conformance import CASES, IDS, _build, _data_config  # noqa: F401  (the same cases as the conformance suite)

import deepgen
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models import model_class, model_names
from deepgen.models.base import (
    CAPABILITIES,
    NULL_LABEL,
    GenerativeModel,
    Likelihood,
    LossOutput,
    ModelConfig,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("capability-data")


def _run_checks(model: GenerativeModel, x: torch.Tensor, cond: torch.Tensor | None) -> list[str]:
    model.eval()
    ran = []
    for name in model.capabilities():
        CHECKS[name](model, x, cond)
        ran.append(name)
    return ran


@pytest.mark.parametrize("name,data,variant", CASES, ids=IDS)
def test_declared_capabilities_hold(name, data, variant, data_dir):
    model, ds = _build(name, _data_config(data, data_dir), variant)
    batch = next(iter_batches(ds, 6))
    _run_checks(model, batch.x, None)


def iter_batches(ds, n):
    from deepgen.data import iterate

    return iterate(ds, "test", n, "cpu", torch.Generator().manual_seed(0), n)


CONDITIONAL = [n for n in model_names() if "conditional" in model_class(n).config_class.field_names()]


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_capabilities_take_cond(name, data_dir):
    """Conditional variants: every capability runs with labels given as ``cond=``, and
    ``num_classes`` is the base model's member."""
    ds = deepgen.load_dataset(_data_config("digits", data_dir))
    torch.manual_seed(0)
    model = deepgen.create_model(name, ds, conditional=True, **model_class(name).variants(ds.spec)[0])
    assert model.num_classes == 10 and model.conditional
    batch = next(iter_batches(ds, 6))
    ran = _run_checks(model, batch.x, batch.y)
    assert ran or name in ("gan", "dcgan", "wgan", "wgan-gp")
    with torch.no_grad():
        a = model.sample(4, generator=torch.Generator().manual_seed(0), cond=torch.tensor([0, 1, 2, 3]))
        b = model.sample(4, generator=torch.Generator().manual_seed(0), cond=3)
    assert a.shape == b.shape == (4, *ds.spec.shape)
    if model.null_label:  # trained for classifier-free guidance: no labels = the null label, the unconditional model
        with torch.no_grad():
            none = model.sample(2, generator=torch.Generator().manual_seed(1))
            null = model.sample(2, generator=torch.Generator().manual_seed(1), cond=NULL_LABEL)
        assert torch.equal(none, null)
        with pytest.raises(UserError, match=r"labels must be in 0..9 or -1 \(no label\)"):
            model.sample(2, cond=torch.tensor([0, 10]))
    else:
        with pytest.raises(UserError, match="pass labels"):
            model.sample(2)
        with pytest.raises(UserError, match="labels must be in 0..9"):
            model.sample(2, cond=torch.tensor([0, 10]))
    unconditional = deepgen.create_model(name, ds)
    assert unconditional.num_classes is None and unconditional.labels(None, 2) is None
    with pytest.raises(UserError, match="is unconditional: it takes no labels"):  # not silently ignored
        unconditional.labels(torch.tensor([1, 2]), 2)


def test_every_model_with_a_likelihood_declares_it():
    spec = DataSpec((1, 8, 8), "continuous", num_levels=17, num_classes=10)
    for name in model_names():
        model = deepgen.create_model(name, spec)
        if "log_prob" in model.capabilities() or "elbo" in model.capabilities():
            assert model.likelihood_info() is not None, name
        else:
            assert model.likelihood_info() is None, name


# -- label helpers ----------------------------------------------------------------------------


class _Labelled(GenerativeModel):
    def __init__(self, spec: DataSpec, null_label: bool) -> None:
        super().__init__(ModelConfig(), spec, conditional=True, null_label=null_label)
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_null_label_is_accepted_only_where_declared():
    spec = DataSpec((2,), "real", num_classes=3)
    cfg = _Labelled(spec, null_label=True)
    assert torch.equal(cfg.labels(None, 3), torch.full((3,), NULL_LABEL))
    hot = cfg.one_hot(torch.tensor([0, NULL_LABEL, 2]), 3)
    assert torch.equal(hot, torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]]))
    assert torch.equal(cfg.label_index(torch.tensor([0, NULL_LABEL, 2]), 3), torch.tensor([0, 3, 2]))
    plain = _Labelled(spec, null_label=False)
    with pytest.raises(UserError, match="pass labels"):
        plain.labels(None, 3)
    with pytest.raises(UserError, match=r"labels must be in 0..2;"):
        plain.labels(torch.tensor([NULL_LABEL]), 1)
    with pytest.raises(UserError, match="integers"):
        plain.labels(torch.tensor([0.5]), 1)
    with pytest.raises(UserError, match="2 labels given for 3"):
        plain.labels(torch.tensor([0, 1]), 3)
    assert torch.equal(plain.labels(2, 3), torch.tensor([2, 2, 2]))


# -- reference models for the capabilities no family has yet ----------------------------------


class ToyFlow(GenerativeModel):
    """z = A x + b with A = L U (unit lower-triangular L, upper U with exp'd diagonal) on
    (N, D) real data: log |det dz/dx| = sum log|U_ii|; ``broken`` adds 0.1 to log_det."""

    data_kinds = ("real",)

    def __init__(self, d: int, broken: str = "") -> None:
        super().__init__(ModelConfig(), DataSpec((d,), "real"))
        g = torch.Generator().manual_seed(0)
        self.lower = torch.nn.Parameter(torch.randn(d, d, generator=g).tril(-1) * 0.5)
        self.upper = torch.nn.Parameter(torch.randn(d, d, generator=g).triu(1) * 0.5)
        self.log_diag = torch.nn.Parameter(torch.randn(d, generator=g) * 0.3)
        self.shift = torch.nn.Parameter(torch.randn(d, generator=g))
        self.broken = broken

    def _matrix(self) -> torch.Tensor:
        eye = torch.eye(len(self.shift), dtype=self.shift.dtype)
        return (self.lower + eye) @ (self.upper + torch.diag(torch.exp(self.log_diag)))

    def forward(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z = x @ self._matrix().T + self.shift
        log_det = self.log_diag.sum().expand(len(x)) + (0.1 if self.broken == "log_det" else 0.0)
        return z, log_det

    def inverse(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.linalg.solve(self._matrix(), (z - self.shift).T).T
        return x * 1.001 if self.broken == "inverse" else x

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", False, "exact")

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        z, log_det = self(x)
        return -0.5 * (z * z + math.log(2 * math.pi)).sum(dim=1) + log_det

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        return LossOutput(-self.log_prob(batch.x).mean())

    def sample(self, n, *, generator=None, cond=None, mean=False):
        return self.inverse(torch.randn(n, len(self.shift), generator=generator))


class ToyAutoregressive(GenerativeModel):
    """Binary (N, D) data, logits_i = b_i + sum_{j<i} W_ij x_{o(j)} in a random order o.

    ``broken``: "mask" lets output i see its own input; "cache" makes the cached decoder
    drift; "complete" overwrites a known position.
    """

    data_kinds = ("binary", "tokens")

    def __init__(self, d: int, broken: str = "", tokens: bool = False) -> None:
        spec = DataSpec((d,), "tokens", vocab_size=2) if tokens else DataSpec((d,), "binary")
        super().__init__(ModelConfig(), spec)
        g = torch.Generator().manual_seed(1)
        self.register_buffer("order", torch.randperm(d, generator=g))
        self.weight = torch.nn.Parameter(torch.randn(d, d, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(d, generator=g))
        self.broken = broken

    def ordering(self) -> torch.Tensor:
        return self.order

    def _mask(self) -> torch.Tensor:
        d = len(self.bias)
        return torch.ones(d, d).tril(0 if self.broken == "mask" else -1)

    def position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        xo = x.reshape(len(x), -1)[:, self.order].to(self.weight.dtype)  # (N, T) in the model's order
        return (xo @ (self.weight * self._mask()).T + self.bias).unsqueeze(-1)  # (N, T, 1)

    def cached_position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        xo = x.reshape(len(x), -1)[:, self.order].to(self.weight.dtype)
        acc = self.bias.expand(len(x), -1).clone()  # running sums: the "cache"
        outs = []
        for i in range(len(self.bias)):
            outs.append(acc[:, i] + (1e-2 * i if self.broken == "cache" else 0.0))
            acc = acc + xo[:, i : i + 1] * (self.weight[:, i] * self._mask()[:, i])
        return torch.stack(outs, dim=1).unsqueeze(-1)

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", True, "exact")

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.position_outputs(x).squeeze(-1)
        xo = x.reshape(len(x), -1)[:, self.order].to(logits.dtype)
        return -torch.nn.functional.binary_cross_entropy_with_logits(logits, xo, reduction="none").sum(dim=1)

    def complete(self, x, known, *, generator=None, cond=None):
        out = x.clone().reshape(len(x), -1).to(self.weight.dtype)
        known = known.expand_as(x).reshape(len(x), -1)
        for i, pos in enumerate(self.order.tolist()):
            logits = self.position_outputs(out).squeeze(-1)[:, i]
            draw = torch.bernoulli(torch.sigmoid(logits), generator=generator)
            keep = known[:, pos] if self.broken != "complete" else torch.zeros_like(known[:, pos])
            out[:, pos] = torch.where(keep, out[:, pos], draw)
        return out.reshape(x.shape).to(x.dtype)

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        return LossOutput(-self.log_prob(batch.x).mean())

    def sample(self, n, *, generator=None, cond=None, mean=False):
        x = torch.zeros(n, len(self.bias))
        return self.complete(x, torch.zeros_like(x, dtype=torch.bool), generator=generator)


def test_reference_flow_passes_and_broken_flows_fail():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    flow = ToyFlow(4)
    assert set(flow.capabilities()) >= {"invertible", "log_prob"}
    check_invertible(flow, x, None)
    check_log_prob(ToyFlow(4), x, None)
    for broken in ("log_det", "inverse"):
        with pytest.raises(AssertionError):
            check_invertible(ToyFlow(4, broken), x, None)


@pytest.mark.parametrize("tokens", [False, True])
def test_reference_autoregressive_passes_and_broken_ones_fail(tokens):
    x = (torch.rand(6, 7, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    if tokens:
        x = x.long()
    model = ToyAutoregressive(7, tokens=tokens)
    assert set(model.capabilities()) >= {"autoregressive", "cached_decoding", "complete", "log_prob"}
    for name in model.capabilities():
        CHECKS[name](model, x, None)
    with pytest.raises(AssertionError, match="positions >= "):
        check_autoregressive(ToyAutoregressive(7, "mask", tokens=tokens), x, None)
    with pytest.raises(AssertionError, match="cached"):
        check_cached_decoding(ToyAutoregressive(7, "cache", tokens=tokens), x, None)
    with pytest.raises(AssertionError, match="known"):
        check_complete(ToyAutoregressive(7, "complete", tokens=tokens), x, None)


def test_reference_autoregressive_probabilities_sum_to_one():
    """The reference is a real distribution: 2^5 binary vectors' probabilities sum to 1."""
    model = ToyAutoregressive(5)
    grid = torch.tensor([[(i >> b) & 1 for b in range(5)] for i in range(32)], dtype=torch.float32)
    with torch.no_grad():
        total = model.log_prob(grid).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)


def test_every_capability_has_a_check():
    assert set(CHECKS) == set(CAPABILITIES)
