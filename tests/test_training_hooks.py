"""The trainer's hooks: callbacks (and the sample pictures as one), the run folder's one
owner, EMA warm-up, data-dependent initialisation and per-phase parameter groups.

A tiny test-only model (:class:`Shift`) is registered for the tests that resume (resuming
rebuilds the model by name) through a fixture that removes it again, so the global
registry of the other tests never sees it.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import deepgen
from deepgen.data import DataConfig, ResidentLoader
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models.base import DataInit, GenerativeModel, LossOutput, ModelConfig, Phase
from deepgen.optim import OptimizerSpec, decay_groups, ema_decay
from deepgen.pictures import SamplePictures
from deepgen.registry import MODELS
from deepgen.training import TrainConfig, Trainer, checkpoint, load_run, read_metrics, seed_all

DATA = DataConfig(name="digits", max_train=256)  # 8 batches of 32 per epoch
NAME = "test-shift"
SRC = Path(__file__).resolve().parents[1] / "src" / "deepgen"


@dataclass(frozen=True)
class ShiftConfig(ModelConfig):
    load_time: ClassVar[frozenset[str]] = frozenset({"temperature"})  # what a loaded run may change

    lr: float = 1e-2
    conditional: bool = False
    weight_decay: float = 0.0  # > 0: nanoGPT's AdamW groups (decay_groups)
    zero_grad: bool = False  # a loss whose gradients are all zero (only weight decay moves the weights)
    temperature: float = 1.0  # a sampling knob: changes no parameter


class Shift(GenerativeModel):
    """Test only: x ~ W z + shift, the shift set from the data (an actnorm-like init)."""

    config_class = ShiftConfig
    inits: ClassVar[list[torch.Tensor]] = []  # the x of every data_init call, in order

    def __init__(self, config: ShiftConfig, spec: DataSpec) -> None:
        super().__init__(config, spec, conditional=config.conditional)
        d = spec.dim
        self.lin = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.shift = nn.Parameter(torch.zeros(d))
        self.seen: list[torch.Tensor] = []  # x of the batches loss() saw
        self.conds: list[torch.Tensor | None] = []  # cond of every sample() call

    def data_init(self, batch: Batch) -> None:
        type(self).inits.append(batch.x.clone())
        self.shift.copy_(batch.x.flatten(1).mean(0))

    def phases(self) -> list[Phase]:
        spec = OptimizerSpec(name="adamw" if self.config.weight_decay else "adam", lr=self.config.lr)
        if self.config.weight_decay:
            return [Phase("main", decay_groups(self, self.config.weight_decay), spec)]
        return [Phase("main", list(self.parameters()), spec)]

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        self.seen.append(batch.x)
        if self.config.zero_grad:
            return LossOutput(sum(p.sum() for p in self.parameters()) * 0.0)
        x = batch.x.flatten(1)
        noisy = x + 0.1 * torch.randn_like(x)  # the global generator: resuming must restore it
        recon = self.lin(self.norm(noisy - self.shift)) + self.shift
        return LossOutput(((recon - x) ** 2).mean())

    def sample(self, n, *, generator=None, cond=None, mean=False):
        self.conds.append(cond)
        z = torch.randn(n, self.spec.dim, generator=generator, device=self.device) * self.config.temperature
        return (self.lin(z) + self.shift).clamp(0, 1).reshape(n, *self.spec.shape)


@pytest.fixture
def shift(monkeypatch: pytest.MonkeyPatch) -> type[Shift]:
    """Shift registered as NAME for this test only; its record of data_init calls cleared."""
    deepgen.model_names()  # the families register first
    monkeypatch.setitem(MODELS._items, NAME, Shift)
    monkeypatch.setattr(Shift, "registered_name", NAME)
    monkeypatch.setattr(Shift, "inits", [])
    return Shift


def _config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=32, device="cpu", log_every=1, progress=False, tensorboard=False)
    return dataclasses.replace(base, **changes)


def _trainer(run_dir, model: str = NAME, callbacks=(), model_args: dict | None = None, **train) -> Trainer:
    ds = deepgen.load_dataset(DATA)
    seed_all(0)
    args = model_args if model_args is not None else ({"hidden": (32,), "latent_dim": 4} if model == "vae" else {})
    m = Shift(ShiftConfig(**args), ds.spec) if model == NAME else deepgen.create_model(model, ds, **args)
    return Trainer(m, ds, _config(**train), run_dir, data_config=DATA, callbacks=callbacks)


def _same_files(a: Path, b: Path, name: str) -> None:
    x, y = load_file(str(a / name)), load_file(str(b / name))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


# -- 1. callbacks; the pictures are one -------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, bool, bool, bool]] = []
        self.epochs: list[int] = []
        self.fits: list[int] = []

    def on_step_end(self, trainer: Trainer) -> None:
        self.steps.append((trainer.step, trainer.sample_due, trainer.epoch_ended, trainer.fit_ending))

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.epochs.append(trainer.step)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.fits.append(trainer.step)


def test_callbacks_hear_every_step_each_epoch_end_and_the_fit_end(shift):
    rec, plain = Recorder(), []
    trainer = _trainer(None, callbacks=[rec, lambda t: plain.append(t.step)], sample_every=3, epochs=2)
    trainer.fit()
    assert [s for s, *_ in rec.steps] == list(range(1, 17))
    assert [s for s, due, _, _ in rec.steps if due] == [3, 6, 9, 12, 15, 16]  # every 3 and the last
    assert [s for s, _, ended, _ in rec.steps if ended] == [8, 16] == rec.epochs == plain
    assert [s for s, _, _, last in rec.steps if last] == [16] == rec.fits
    epochs = Recorder()
    _trainer(None, callbacks=[epochs], epochs=2).fit()  # sample_every=0: the epoch ends
    assert [s for s, due, _, _ in epochs.steps if due] == [8, 16]
    with pytest.raises(TypeError, match="callback"):
        _trainer(None, callbacks=[42])


def test_the_trainer_draws_no_pictures_sample_pictures_does(shift, tmp_path):
    bare = tmp_path / "bare"
    _trainer(bare, epochs=1).fit()
    assert (bare / checkpoint.WEIGHTS).is_file()
    assert not list(bare.glob("*.png")) and not (bare / checkpoint.SAMPLES_DIR).exists()
    drawn = tmp_path / "drawn"
    trainer = _trainer(drawn, callbacks=[SamplePictures()], epochs=2)
    trainer.fit()
    assert (drawn / "samples.png").is_file()
    assert sorted(p.name for p in (drawn / "samples").iterdir()) == ["step0000008.png", "step0000016.png"]
    assert trainer.model.conds == [None, None]  # unconditional: no labels
    assert not [p for p in drawn.rglob(".*")], "temporary files left"


def test_sample_pictures_label_conditional_samples_by_num_classes(shift, tmp_path):
    trainer = _trainer(tmp_path / "c", callbacks=[SamplePictures(n=12)], model_args={"conditional": True}, max_steps=1)
    assert trainer.model.num_classes == 10
    trainer.fit()
    (cond,) = trainer.model.conds
    assert torch.equal(cond, torch.arange(12) % 10)


def _imports(path: Path, package: str) -> list[str]:
    """Absolute names of the modules ``path`` (in ``package``) imports from."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out += [module] if node.module else [f"{module}.{a.name}" for a in node.names]
    return out


def test_training_imports_no_presentation_no_metrics_no_cli():
    banned = ("deepgen.viz", "deepgen.pictures", "deepgen.analysis", "deepgen.report", "deepgen.bench", "deepgen.cli", "deepgen.metrics")
    for path in sorted((SRC / "training").glob("*.py")):
        bad = [n for n in _imports(path, "deepgen.training") if n.startswith(banned)]
        assert not bad, f"{path.name} imports {bad}"


# -- 2. one owner of the run folder -----------------------------------------------------------


def test_the_cli_uses_the_run_folder_format_of_checkpoint(tmp_path):
    import deepgen.cli as cli

    assert not hasattr(cli, "RUN_FILES") and "config.json" in checkpoint.RUN_FILES and "samples" in checkpoint.RUN_FILES
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.json", "eval.json", "samples.png", "notes.txt"):
        (folder / name).write_text("x")
    (folder / "samples").mkdir()
    assert checkpoint.is_run(folder) and not checkpoint.has_checkpoint(folder)
    assert checkpoint.discard_unfinished(folder, created=False)  # an older folder: only the run's files go
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "config.json").write_text("x")
    (folder / "model.safetensors").write_text("x")
    assert not checkpoint.discard_unfinished(folder, created=True)  # it has a checkpoint: kept
    (folder / "model.safetensors").unlink()
    assert checkpoint.discard_unfinished(folder, created=True) and not folder.exists()


def test_one_function_rebuilds_a_runs_model(shift, tmp_path, monkeypatch):
    run = tmp_path / "r"
    _trainer(run, epochs=1).fit()
    cfg = checkpoint.read_run_config(run)
    model = checkpoint.build_model(cfg, None, {"temperature": "0.5"})
    assert isinstance(model, Shift) and model.config.temperature == 0.5 and model.spec == deepgen.load_dataset(DATA).spec
    with pytest.raises(UserError, match="no setting 'temprature'"):
        checkpoint.build_model(cfg, None, {"temprature": "0.5"})
    calls = []
    original = checkpoint.build_model
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert load_run(run, model_overrides={"temperature": "0.5"}).model.config.temperature == 0.5
    Trainer.resume(run, epochs=2)
    assert len(calls) == 2


# -- 3. EMA warm-up ---------------------------------------------------------------------------


class Weights:
    """Records the model's and the EMA's weights after every step."""

    def __init__(self) -> None:
        self.model: list[list[torch.Tensor]] = []
        self.ema: list[list[torch.Tensor]] = []

    def on_step_end(self, trainer: Trainer) -> None:
        self.model.append([p.detach().clone() for p in trainer.model.parameters()])
        self.ema.append([p.detach().clone() for p in trainer.ema.model.parameters()])


def test_ema_warmup_copies_first_then_follows_the_decay_schedule(shift):
    rec = Weights()
    trainer = _trainer(None, callbacks=[rec], ema=0.99, ema_warmup=0.75, max_steps=6)
    assert trainer.ema.warmup_power == 0.75
    trainer.fit()
    assert all(torch.equal(e, m) for e, m in zip(rec.ema[0], rec.model[0]))  # the first update: decay 0
    for k in range(1, 6):  # update k (0-based) uses ema_decay(0.99, k, 0.75)
        d = ema_decay(0.99, k, 0.75)
        assert 0 < d < 0.99
        for e_prev, e, m in zip(rec.ema[k - 1], rec.ema[k], rec.model[k]):
            torch.testing.assert_close(e, e_prev + (1 - d) * (m - e_prev), rtol=0, atol=1e-6)
    plain = Weights()
    _trainer(None, callbacks=[plain], ema=0.99, max_steps=1).fit()  # no warm-up: the fixed decay
    assert not all(torch.equal(e, m) for e, m in zip(plain.ema[0], plain.model[0]))
    with pytest.raises(UserError, match="ema_warmup=0.75 ramps up the EMA's decay, but this model trains without an EMA"):
        _trainer(None, ema_warmup=0.75)  # ema unset: the model's default, none for this one
    assert _trainer(None, ema=0.0, ema_warmup=0.75).ema is None  # said off: off


def test_a_resumed_run_with_ema_warmup_equals_an_uninterrupted_one(shift, tmp_path):
    _trainer(tmp_path / "long", ema=0.999, ema_warmup=2 / 3, epochs=3).fit()
    _trainer(tmp_path / "short", ema=0.999, ema_warmup=2 / 3, epochs=2).fit()
    Trainer.resume(tmp_path / "short", epochs=3).fit()
    for name in (checkpoint.WEIGHTS, checkpoint.EMA_WEIGHTS):
        _same_files(tmp_path / "long", tmp_path / "short", name)
    assert [r["loss"] for r in read_metrics(tmp_path / "long")] == [r["loss"] for r in read_metrics(tmp_path / "short")]


# -- 4. data-dependent initialisation ----------------------------------------------------------


def test_data_init_runs_once_before_the_first_step_never_on_resume(shift, tmp_path):
    ds = deepgen.load_dataset(DATA)
    trainer = _trainer(tmp_path / "short", ema=0.5, max_steps=1)
    assert isinstance(trainer.model, DataInit)
    trainer.fit()
    (x,) = shift.inits
    assert torch.equal(x, ds.convert(ds.train.x[:32]))  # the first batch_size training examples
    # The training batches are the loader's as without data_init (nothing consumed or shifted).
    assert torch.equal(trainer.model.seen[0], ResidentLoader(ds, 32, "cpu", seed=0).next().x)
    # The EMA starts from the initialised weights: one update with decay 0.5 halves the way.
    init = x.flatten(1).mean(0)
    torch.testing.assert_close(trainer.ema.model.shift, init + 0.5 * (trainer.model.shift - init), rtol=0, atol=1e-6)
    trainer.fit()  # a second fit of a finished trainer initialises nothing
    resumed = Trainer.resume(tmp_path / "short", max_steps=20)
    resumed.fit()
    assert len(shift.inits) == 1
    _trainer(tmp_path / "long", ema=0.5, max_steps=20).fit()
    assert len(shift.inits) == 2
    for name in (checkpoint.WEIGHTS, checkpoint.EMA_WEIGHTS):
        _same_files(tmp_path / "long", tmp_path / "short", name)


# -- 5. parameter groups ------------------------------------------------------------------------


def test_phase_groups_give_their_own_weight_decay(shift):
    trainer = _trainer(None, model_args={"weight_decay": 0.1, "zero_grad": True, "lr": 0.01}, max_steps=1)
    (opt,) = trainer.optimizers
    assert isinstance(opt, torch.optim.AdamW) and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    before["shift"] = shift.inits[0].flatten(1).mean(0)  # set by data_init before the step
    for name, p in model.named_parameters():
        if p.dim() >= 2:  # decoupled decay only (zero gradients): shrinks by lr * wd
            torch.testing.assert_close(p, before[name] * (1 - 0.01 * 0.1), rtol=0, atol=1e-7)
            assert not torch.equal(p, before[name])
        else:  # biases, the norm's gain and the shift: no decay, no gradient, unchanged
            assert torch.equal(p, before[name]), name


def test_grouped_optimizer_state_round_trips_through_resume(shift, tmp_path):
    grouped = {"weight_decay": 0.1}
    short = _trainer(tmp_path / "short", model_args=grouped, epochs=1)
    short.fit()
    resumed = Trainer.resume(tmp_path / "short", epochs=2)
    a, b = short.optimizers[0].state_dict(), resumed.optimizers[0].state_dict()
    assert [g["weight_decay"] for g in b["param_groups"]] == [0.1, 0.0]
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(a["state"][k][key]), torch.as_tensor(b["state"][k][key]))
    resumed.fit()
    _trainer(tmp_path / "long", model_args=grouped, epochs=2).fit()
    _same_files(tmp_path / "long", tmp_path / "short", checkpoint.WEIGHTS)
    saved = json.loads((tmp_path / "short" / "trainer_state" / "state.json").read_text())
    assert [g["weight_decay"] for g in saved["optimizers"][0]["param_groups"]] == [0.1, 0.0]
