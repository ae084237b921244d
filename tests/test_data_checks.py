"""The Python API's data checks: every capability method that takes data x (N, *shape),
of every registered model, refuses data of another shape, a non-tensor, non-finite values
and (in eval mode) values outside the data's range with one UserError naming the method,
what it takes and what it got, instead of a matrix-shape or index error from deep inside
a network (``GenerativeModel.check_data``, applied to ``DATA_METHODS`` when a class is made).
"""

from __future__ import annotations

import pytest
import torch

import deepgen
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models import model_class, model_names
from deepgen.models.base import DATA_METHODS, GenerativeModel

SPECS = [
    DataSpec((1, 8, 8), "continuous", num_levels=17, num_classes=10, name="digits"),
    DataSpec((1, 8, 8), "binary", num_classes=10, name="binary"),
    DataSpec((1, 4, 4), "discrete", num_levels=4, name="levels"),
    DataSpec((16,), "tokens", vocab_size=5, name="text"),
    DataSpec((2,), "real", name="ring"),
]


def _spec_for(name: str) -> DataSpec:
    kinds = model_class(name).data_kinds
    return next(s for s in SPECS if s.kind in kinds)


def _cases() -> list[tuple[str, str]]:
    return [(name, method) for name in model_names() for method in DATA_METHODS if hasattr(model_class(name), method)]


CASES = _cases()


def _call(model: GenerativeModel, method: str, x: object) -> None:
    fn = getattr(model, method)
    if method == "complete":
        fn(x, torch.ones(model.spec.shape, dtype=torch.bool))
    else:
        fn(x)


def _valid(spec: DataSpec, n: int = 3) -> torch.Tensor:
    if spec.kind == "tokens":
        return torch.randint(0, spec.vocab_size or 2, (n, *spec.shape))
    if spec.kind == "discrete":
        return torch.randint(0, spec.num_levels or 2, (n, *spec.shape)).float()
    if spec.kind == "binary":
        return torch.randint(0, 2, (n, *spec.shape)).float()
    return torch.rand(n, *spec.shape)


def test_every_model_has_some_checked_method() -> None:
    assert {name for name, _ in CASES} >= {"vae", "ae", "realnvp", "made", "pixelcnn", "transformer", "ddpm", "aae"}


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_wrong_shape_is_one_clear_error(name: str, method: str) -> None:
    spec = _spec_for(name)
    model = deepgen.create_model(name, spec).eval()
    want = f"(N, {', '.join(str(d) for d in spec.shape)})"
    bad_shapes = [(3, *[d + 1 for d in spec.shape]), (3, spec.dim + 1), spec.shape]  # another size; flat; no batch dimension
    for shape in bad_shapes:
        with pytest.raises(UserError) as err:
            _call(model, method, torch.zeros(shape))
        text = str(err.value)
        assert f"{name}.{method}" in text and want in text and str(tuple(shape)) in text, text
    with pytest.raises(UserError, match="torch.Tensor"):
        _call(model, method, _valid(spec).tolist())
    model.train()  # the shape check has no host sync: it holds in training mode too
    with pytest.raises(UserError, match="takes x of shape"):
        _call(model, method, torch.zeros(bad_shapes[0]))


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_bad_values_are_one_clear_error_in_eval_mode(name: str, method: str) -> None:
    spec = _spec_for(name)
    model = deepgen.create_model(name, spec).eval()
    x = _valid(spec).float()
    x[1].view(-1)[2] = float("nan")
    with pytest.raises(UserError, match=r"1 NaN or infinite value\(s\)"):
        _call(model, method, x)
    if spec.kind in ("binary", "discrete", "tokens"):
        top = {"binary": 1, "discrete": (spec.num_levels or 0) - 1, "tokens": (spec.vocab_size or 0) - 1}[spec.kind]
        for value, shown in [(top + 1, f"to {top + 1:g}"), (-1, "from -1")]:
            x = _valid(spec)
            x.view(-1)[0] = value
            with pytest.raises(UserError, match=f"0..{top}|in \\[0, 1\\]") as err:
                _call(model, method, x)
            assert shown in str(err.value), str(err.value)


def test_valid_data_passes_and_gives_the_unwrapped_result() -> None:
    """The wrapper changes nothing for good data: a VAE's reconstruction_nll (a mixin's
    method, wrapped on the family) and a MADE's log_prob equal the unwrapped functions'."""
    spec = SPECS[1]
    torch.manual_seed(0)
    vae = deepgen.create_model("vae", spec, hidden=(16,), latent_dim=2).eval()
    made = deepgen.create_model("made", spec, hidden=(32,)).eval()
    x = _valid(spec, 4)
    with torch.no_grad():
        assert torch.equal(vae.reconstruction_nll(x), type(vae).reconstruction_nll.__wrapped__(vae, x))
        assert torch.equal(made.log_prob(x), type(made).log_prob.__wrapped__(made, x))


def test_training_step_is_not_checked_for_values() -> None:
    """In training mode only the (free) shape check runs: a loss that calls a wrapped
    method (the AAE's encode) takes no host sync for it."""
    spec = SPECS[1]
    torch.manual_seed(0)
    aae = deepgen.create_model("aae", spec).train()
    out = aae.loss(Batch(_valid(spec, 8)), aae.phases()[0].name)
    assert torch.isfinite(out.loss)


def test_a_user_family_gets_the_checks() -> None:
    """A model class defined outside deepgen (a plugin) is wrapped when it is made."""

    class Tiny(GenerativeModel):
        config_class = model_class("made").config_class
        data_kinds = ("binary",)

        def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
            return x.flatten(1).sum(1)

    model = Tiny(Tiny.config_class(), SPECS[1]).eval()
    assert torch.equal(model.log_prob(torch.ones(2, 1, 8, 8)), torch.full((2,), 64.0))
    with pytest.raises(UserError, match=r"Tiny\.log_prob takes x of shape \(N, 1, 8, 8\)"):
        model.log_prob(torch.ones(2, 64))


@pytest.mark.parametrize("name", model_names())
def test_sample_count_is_checked(name: str) -> None:
    model = deepgen.create_model(name, _spec_for(name)).eval()
    for n in (-1, 2.5, "3", True, None):
        with pytest.raises(UserError, match=rf"{name}\.sample takes n, the number of examples, as a whole number >= 0"):
            model.sample(n)  # type: ignore[arg-type]
    assert model.sample(0).shape == (0, *model.spec.shape)


CODE_MODELS = [n for n in model_names() if hasattr(model_class(n), "decode")]


@pytest.mark.parametrize("name", CODE_MODELS)
def test_decode_takes_what_encode_returns(name: str) -> None:
    """code_dim() is the width of encode's codes; decode refuses any other width."""
    spec = _spec_for(name)
    torch.manual_seed(0)
    model = deepgen.create_model(name, spec, **({"steps": 2} if name == "ddpm" else {})).eval()
    with torch.no_grad():
        z = model.encode(_valid(spec, 2))
        assert z.shape == (2, model.code_dim()), (name, tuple(z.shape))
        assert model.decode(z).shape == (2, *spec.shape)
    for bad in (torch.zeros(2, model.code_dim() + 1), torch.zeros(model.code_dim()), torch.zeros(2, 1, model.code_dim())):
        with pytest.raises(UserError, match=rf"{name}\.decode takes codes z of shape \(N, {model.code_dim()}\)"):
            model.decode(bad)
    with pytest.raises(UserError, match="torch.Tensor"):
        model.decode([[0.0] * model.code_dim()])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in model_names() if hasattr(model_class(n), "interpolate")])
def test_interpolate_takes_one_example_each(name: str) -> None:
    spec = _spec_for(name)
    model = deepgen.create_model(name, spec).eval()
    one = _valid(spec, 1)
    for x1, x2 in [(_valid(spec, 2), one), (one, torch.zeros(spec.dim + 1)), (one, one[0].tolist())]:
        with pytest.raises(UserError, match=rf"{name}\.interpolate takes x[12] as one example"):
            model.interpolate(x1, x2)
    nan = one.clone().float()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        model.interpolate(one, nan)
    for steps in (0, 1.5):
        with pytest.raises(UserError, match="steps"):
            model.interpolate(one, one, steps)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in model_names() if hasattr(model_class(n), "complete")])
def test_complete_checks_its_mask(name: str) -> None:
    spec = _spec_for(name)
    model = deepgen.create_model(name, spec).eval()
    x = _valid(spec, 2)
    with pytest.raises(UserError, match=rf"{name}\.complete takes known as a bool tensor"):
        model.complete(x, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(UserError, match="known"):
        model.complete(x, None)  # type: ignore[arg-type]


SAMPLE_COND_MODELS = [n for n in model_names() if "cond" in __import__("inspect").signature(model_class(n).sample).parameters]


@pytest.mark.parametrize("name", SAMPLE_COND_MODELS)
def test_an_unconditional_model_refuses_labels(name: str) -> None:
    """Labels given to an unconditional model were silently ignored (sample(n, cond=3) gave
    unconditional samples); they are one UserError. Without labels it samples as before."""
    model = deepgen.create_model(name, _spec_for(name)).eval()
    assert model.num_classes is None
    with pytest.raises(UserError, match=rf"this {name} is unconditional: it takes no labels"):
        model.sample(2, cond=1)
    assert model.sample(2).shape == (2, *model.spec.shape)


@pytest.mark.parametrize("name", model_names())
def test_sample_runs_in_eval_mode_whatever_the_models_mode(name: str) -> None:
    """sample (and interpolate) are the model's, not a training-time perturbation of it: in
    training mode they give the eval-mode draws (no dropout, batch norm's running statistics,
    which they leave as they were), and each module's mode is restored afterwards."""
    try:  # with dropout where the model takes it on this data
        model = deepgen.create_model(name, _spec_for(name), dropout=0.5)
    except (UserError, TypeError):
        model = deepgen.create_model(name, _spec_for(name))
    model.eval()
    want = model.sample(3, generator=torch.Generator().manual_seed(0))
    model.train()
    first = next(iter(model.children()), None)
    if first is not None:
        first.eval()  # a caller's mixed modes come back as they were
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    got = model.sample(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert model.training and (first is None or not first.training)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
