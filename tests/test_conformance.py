"""The conformance suite: every registered model, on every kind of data it accepts.

For each model x data kind it declares (``data_kinds``) x variant it declares
(``variants(spec)``: e.g. MLP and conv networks) the contract must hold:
finite losses in every phase; every parameter belongs to a phase and gets a gradient
from that phase's loss; ``sample`` returns the data's shape and kind; a save/load round
trip gives identical outputs; the same seed gives identical losses (and another seed
different ones); and, on the CPU, a run interrupted and resumed equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_metrics

import deepgen
from deepgen.data import KINDS, DataConfig, DataSpec, ResidentLoader
from deepgen.errors import UserError
from deepgen.models import model_class, model_names
from deepgen.training import TrainConfig, Trainer, load_run, read_metrics, seed_all

# Each data case: a DataConfig factory (the binary one writes an .npz into a tmp folder),
# and the spec it loads as (checked against the loaded data below), from which the cases
# are chosen: a model gets the cases whose kind it declares, once per declared variant.
DATA_CASES = ["digits", "binary", "ring8"]
CASE_SPECS = {
    "digits": DataSpec((1, 8, 8), "continuous", num_levels=17, num_classes=10, name="digits"),
    "binary": DataSpec((1, 8, 8), "binary", num_classes=10, name="binary"),
    "ring8": DataSpec((2,), "real", num_classes=8, name="ring8"),
}


def _data_config(case: str, tmp: Path) -> DataConfig:
    if case == "digits":
        return DataConfig(name="digits", max_train=128)
    if case == "ring8":
        return DataConfig(name="ring8", num_samples=128)
    path = tmp / "binary.npz"
    if not path.exists():
        digits = deepgen.load_dataset("digits")
        x = (digits.train.x[:160] >= 8).to(torch.uint8).numpy()
        np.savez(path, x=x, y=digits.train.y[:160].numpy())
    return DataConfig(name=str(path))


def _cases() -> list[tuple[str, str, dict]]:
    cases = []
    for name in model_names():
        cls = model_class(name)
        for data in DATA_CASES:
            spec = CASE_SPECS[data]
            if spec.kind in cls.data_kinds:
                cases += [(name, data, variant) for variant in cls.variants(spec)]
    return cases


CASES = _cases()
IDS = [f"{m}-{d}" + "".join(f"-{v}" for v in variant.values()) for m, d, variant in CASES]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conformance-data")


def _build(name: str, data: DataConfig, variant: dict, seed: int = 0):
    ds = deepgen.load_dataset(data)
    seed_all(seed)
    return deepgen.create_model(name, ds, **variant), ds


def _train_config(**changes) -> TrainConfig:
    # Batch 16 of 128 examples: 8 steps an epoch (a WGAN's n_critic batches a step, a stacked
    # AE's phases, a resume mid-epoch as before), small arithmetic; the validation loss on
    # 32 examples, compared between the full and the resumed run like every logged value.
    base = TrainConfig(epochs=2, batch_size=16, val_limit=32, seed=0, device="cpu", log_every=1, progress=False, tensorboard=False)
    return dataclasses.replace(base, **changes)


def _check_kind(x: torch.Tensor, spec) -> None:
    assert tuple(x.shape[1:]) == spec.shape
    assert torch.isfinite(x.float()).all()
    if spec.kind == "binary":
        assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    elif spec.kind == "continuous":
        assert x.min() >= 0 and x.max() <= 1
    elif spec.kind == "discrete":
        assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= spec.num_levels - 1


@pytest.mark.parametrize("name,data,variant", CASES, ids=IDS)
def test_phases_losses_and_gradients(name, data, variant, data_dir):
    model, ds = _build(name, _data_config(data, data_dir), variant)
    phases = model.phases()
    covered = {id(p) for phase in phases for p in phase.parameters}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    assert not missing, f"parameters in no phase: {missing}"
    loader = ResidentLoader(ds, 32, "cpu", seed=0)
    for phase in phases:
        batch = loader.next()
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, phase.name)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"phase {phase.name}: loss {out.loss}"
        for key, value in out.logs.items():
            assert isinstance(value, torch.Tensor) and value.numel() == 1, f"log {key} must be a 0-d tensor"
        out.loss.backward()
        no_grad = [n for n, p in model.named_parameters() if any(p is q for q in phase.parameters) and p.grad is None]
        assert not no_grad, f"phase {phase.name}: no gradient reaches {no_grad}"
        for p in phase.parameters:
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name,data,variant", CASES, ids=IDS)
def test_sample_has_shape_and_kind(name, data, variant, data_dir):
    model, ds = _build(name, _data_config(data, data_dir), variant)
    model.eval()
    with torch.no_grad():
        draw = model.sample(7, generator=torch.Generator().manual_seed(0))
        again = model.sample(7, generator=torch.Generator().manual_seed(0))
    _check_kind(draw, ds.spec)
    assert torch.equal(draw, again), "sample must be a function of the generator"


@pytest.mark.parametrize("name,data,variant", CASES, ids=IDS)
def test_seed_save_load_and_resume(name, data, variant, data_dir, tmp_path):
    data_cfg = _data_config(data, data_dir)

    def run(folder: str, seed: int = 0, **train):
        model, ds = _build(name, data_cfg, variant, seed=seed)
        # Enough epochs for every phase to run (a stacked autoencoder's stages take one each).
        epochs = max(2, *(p.epochs[0] + 1 for p in model.phases()))
        cfg = _train_config(seed=seed, epochs=epochs, **train)
        trainer = Trainer(model, ds, cfg, tmp_path / folder, data_config=data_cfg)
        trainer.fit()
        return trainer

    full = run("full")
    steps = full.step
    assert steps >= 8 // full.batches_per_step  # a WGAN step uses n_critic batches
    # Interrupted mid-epoch, then resumed: the same losses at every step, the same weights.
    run("part", max_steps=steps // 2 + 1)
    resumed = Trainer.resume(tmp_path / "part", max_steps=0)
    resumed.fit()
    assert_same_metrics(tmp_path / "full", tmp_path / "part")
    a = read_metrics(tmp_path / "full")
    for (n, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), f"{n} differs after resume"
    # Another seed gives other losses (so the equalities above are not vacuous).
    other = run("other", seed=1, max_steps=2)
    first_key = next(k for k in a[0] if k not in ("step", "epoch", "seconds"))
    assert read_metrics(tmp_path / "other")[0][first_key] != a[0][first_key]
    del other
    # Save/load round trip: the loaded model gives identical samples and losses.
    loaded = load_run(tmp_path / "full", model_overrides={})
    model = full.eval_model.eval()  # the EMA weights where the model trains with them (ddpm), as load_run loads
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.no_grad():
        assert torch.equal(model.sample(5, generator=gen()), loaded.model.sample(5, generator=gen()))
        batch = ResidentLoader(full.dataset, 16, "cpu", seed=5).next()
        losses = []
        for m in (model, loaded.model):
            torch.manual_seed(11)
            losses.append(m.loss(batch, m.phases()[-1].name).loss)
        assert torch.equal(losses[0], losses[1])
    assert loaded.model_config == full.model.config


def test_every_model_is_described_and_has_a_config():
    for name in model_names():
        cls = model_class(name)
        assert cls.describe(), f"{name} needs a one-line docstring"
        cls.config_class()  # defaults are valid


def test_every_model_names_real_load_time_settings_and_defaultable_train_settings():
    """``load_time`` (what a loaded run may change) names real fields of each config (a
    typo would refuse the knob it meant), and ``train_defaults`` only TrainConfig fields a
    Trainer fills in (MODEL_DEFAULTED). That each load_time knob leaves the weights as they
    are is the family tests' business (sampling with them on a loaded run)."""
    from deepgen.training.config import MODEL_DEFAULTED

    for name in model_names():
        cls = model_class(name)
        fields = set(cls.config_class.field_names())
        assert cls.config_class.load_time <= fields, (name, cls.config_class.load_time - fields)
        assert set(cls.train_defaults) <= set(MODEL_DEFAULTED), (name, cls.train_defaults)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'vea'.*Did you mean 'vae'"):
        model_class("vea")


@pytest.mark.parametrize("data", DATA_CASES)
def test_case_specs_match_the_loaded_data(data, data_dir):
    """The specs the cases are chosen from are the specs the data really loads as."""
    spec = deepgen.load_dataset(_data_config(data, data_dir)).spec
    want = CASE_SPECS[data]
    assert (spec.shape, spec.kind, spec.num_levels, spec.num_classes) == (want.shape, want.kind, want.num_levels, want.num_classes)


def test_every_model_declares_kinds_and_refuses_the_others():
    """A model built on a kind it does not declare is one UserError naming what it accepts
    and which models take that kind (the base class's check, written once)."""
    examples = {
        "binary": DataSpec((4,), "binary"),
        "continuous": DataSpec((4,), "continuous", num_levels=256),
        "discrete": DataSpec((4,), "discrete", num_levels=5),
        "tokens": DataSpec((6,), "tokens", vocab_size=7),
        "real": DataSpec((4,), "real"),
    }
    assert set(examples) == set(KINDS)
    for name in model_names():
        cls = model_class(name)
        assert cls.data_kinds and set(cls.data_kinds) <= set(KINDS), name
        for kind, spec in examples.items():
            if kind in cls.data_kinds:
                continue
            with pytest.raises(UserError, match=f"the {name} model takes .*holds {kind}"):
                deepgen.create_model(name, spec)


def test_a_conditional_model_without_labels_is_one_user_error():
    """``conditional=true`` on unlabelled data is refused by the base class, for every family that has it."""
    spec = DataSpec((1, 8, 8), "continuous", num_levels=17)
    for name in model_names():
        if "conditional" not in model_class(name).config_class.field_names():
            continue
        with pytest.raises(UserError, match="conditional=true needs labelled data"):
            deepgen.create_model(name, spec, conditional=True)
