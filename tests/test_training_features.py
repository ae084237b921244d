"""Trainer settings and records: gradient accumulation, weight decay, lr / gradient norm /
throughput logging, the validation loss, early stopping, the atomic log trim, provenance."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess

import pytest
import torch

import deepgen
from deepgen.data import DataConfig
from deepgen.errors import UserError
from deepgen.models.base import Phase
from deepgen.optim import OptimizerSpec, ParamGroup, build_optimizer
from deepgen.training import TrainConfig, Trainer, load_run, read_metrics, seed_all
from deepgen.training import checkpoint as ckpt
from deepgen.training import logging as run_logging
from deepgen.training.trainer import _weight_decay_override

DATA = DataConfig(name="digits", max_train=128)
SMALL = {"hidden": (32,), "latent_dim": 4}


def _config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=32, device="cpu", log_every=1, progress=False, tensorboard=False, val_limit=64)
    return dataclasses.replace(base, **changes)


def _trainer(run_dir=None, model_name="vae", data=DATA, model_args=SMALL, **train) -> Trainer:
    ds = deepgen.load_dataset(data)
    seed_all(0)
    model = deepgen.create_model(model_name, ds, **model_args)
    return Trainer(model, ds, _config(**train), run_dir, data_config=data)


# -- 1. gradient accumulation ------------------------------------------------------------------


def test_grad_accum_gives_the_step_of_the_whole_batch():
    """The ae's loss is a mean over examples: 4 micro-batches of 8 sum to the gradient of the batch of 32."""
    whole, parts = _trainer(model_name="ae"), _trainer(model_name="ae", grad_accum=4)
    batch = whole.loader.next()
    for t in (whole, parts):
        t.optimizers[0] = torch.optim.SGD(t.phases[0].parameters, lr=0.5)  # one plain step: weights follow the gradient
        t._phase_step(t.phases[0], t.optimizers[0], batch)
    before = _trainer(model_name="ae").model
    assert any(not torch.equal(p, q) for p, q in zip(whole.model.parameters(), before.parameters()))  # the step moved them
    for p, q in zip(whole.model.parameters(), parts.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for key in whole._log_names["main"]:
        i, j = whole._log_names["main"].index(key), parts._log_names["main"].index(key)
        torch.testing.assert_close(whole._sums["main"][i], parts._sums["main"][j], rtol=1e-5, atol=1e-6)


def test_grad_accum_trains_and_refuses_an_uneven_split():
    result = _trainer(grad_accum=4, max_steps=3, epochs=1).fit()
    assert result.steps == 3 and math.isfinite(result.last["loss"])
    with pytest.raises(UserError, match="grad_accum"):
        _config(batch_size=30, grad_accum=4)


# -- 2. weight decay -----------------------------------------------------------------------------


def test_weight_decay_overrides_every_phase_and_keeps_declared_groups():
    assert {g["weight_decay"] for g in _trainer().optimizers[0].param_groups} == {0.0}  # the phase's own
    assert {g["weight_decay"] for g in _trainer(weight_decay=0.05).optimizers[0].param_groups} == {0.05}
    w, b, c = (torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2)))
    phase = Phase("main", [ParamGroup([w], 0.1), ParamGroup([b], 0.0), ParamGroup([c], 0.3)], OptimizerSpec(name="adamw", weight_decay=0.1))
    spec, groups = _weight_decay_override(phase, 0.02)
    opt = build_optimizer(spec, groups, torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.02, 0.0, 0.3]
    with pytest.raises(UserError, match="weight_decay"):
        _config(weight_decay=-1.0)


# -- 3. lr, gradient norm, throughput --------------------------------------------------------------


def test_logs_lr_grad_norm_and_throughput(tmp_path):
    _trainer(tmp_path / "run", schedule="linear", epochs=1, tensorboard=True).fit()
    records = read_metrics(tmp_path / "run")
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)
    assert all(r["samples_per_s"] > 0 for r in records)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(1e-3, rel=0.5) and lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert {"lr", "grad_norm", "samples_per_s", "val_loss"} <= set(events.Tags()["scalars"])


def test_grad_norm_is_the_clipped_norm_when_clipping():
    trainer = _trainer(grad_clip=1e-3, max_steps=2, epochs=1)
    trainer.fit()
    assert trainer.last["grad_norm"] > 1e-3  # the norm before clipping, as clip_grad_norm_ returns it


# -- 4. validation loss -----------------------------------------------------------------------------


def test_val_loss_at_epoch_ends_without_touching_the_training(tmp_path):
    with_val = _trainer(tmp_path / "a", epochs=2)
    with_val.fit()
    without = _trainer(tmp_path / "b", epochs=2, val_limit=0)
    without.fit()
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # the VAE's noise streams are untouched
    for p, q in zip(with_val.model.parameters(), without.model.parameters()):
        assert torch.equal(p, q)
    vals = [r for r in a if "val_loss" in r]
    per_epoch = with_val.loader.steps_per_epoch
    assert [r["step"] for r in vals] == [per_epoch, 2 * per_epoch] and not any("val_loss" in r for r in b)
    assert with_val.validate()["val_loss"] == with_val.validate()["val_loss"] == pytest.approx(vals[-1]["val_loss"])
    assert with_val.model.training


def test_val_loss_keeps_resume_exact(tmp_path):
    full = _trainer(tmp_path / "full", epochs=2)
    full.fit()
    _trainer(tmp_path / "part", epochs=2, max_steps=full.step // 2 + 1).fit()  # stops mid-epoch: an interim val_loss
    part = read_metrics(tmp_path / "part")
    assert "val_loss" in part[-1] and part[-1]["interim"] == ["val_loss"]
    resumed = Trainer.resume(tmp_path / "part", max_steps=0)
    resumed.fit()
    drop = ("seconds", "samples_per_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(tmp_path / "part"))
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_validation_split_is_held_out_of_training_and_validates(tmp_path):
    """validation=N holds the last N training examples out (before max_train): training
    never sees them, val_loss and early stopping read them, the test split is untouched,
    and a resumed run reloads the same split."""
    whole = deepgen.load_dataset(DataConfig(name="digits"))
    data = DataConfig(name="digits", validation=100, max_train=128)
    ds = deepgen.load_dataset(data)
    n = len(whole.train)
    assert len(ds.val) == 100 and torch.equal(ds.val.x, whole.train.x[n - 100 :]) and torch.equal(ds.val.y, whole.train.y[n - 100 :])
    assert torch.equal(ds.train.x, whole.train.x[:128]) and torch.equal(ds.test.x, whole.test.x)
    assert ds.validation_split == "val" and whole.validation_split == "test"
    trainer = _trainer(tmp_path / "run", data=data, epochs=2, val_limit=100, max_steps=6)
    trainer.fit()
    # val_loss is the model's loss on the held-out examples (the trainer's seeded draws).
    gen = torch.Generator().manual_seed(trainer.config.seed + 11)
    torch.manual_seed(trainer.config.seed + 13)
    trainer.model.eval()
    batches = list(deepgen.data.iterate(ds, "val", 32, torch.device("cpu"), gen, limit=100))
    with torch.no_grad():
        manual = sum(float(trainer.model.loss(b).loss) * len(b) for b in batches) / 100
    assert trainer.validate()["val_loss"] == pytest.approx(manual, rel=1e-6)
    on_test = _trainer(tmp_path / "other", epochs=2, val_limit=100, max_steps=6)
    on_test.model.load_state_dict(trainer.model.state_dict())
    assert on_test.validate()["val_loss"] != pytest.approx(trainer.validate()["val_loss"], rel=1e-9)
    resumed = Trainer.resume(tmp_path / "run", max_steps=8)
    assert torch.equal(resumed.dataset.val.x, ds.val.x) and resumed.dataset.validation_split == "val"
    resumed.fit()
    with pytest.raises(UserError, match="validation=2000"):
        deepgen.load_dataset(DataConfig(name="digits", validation=2000))
    with pytest.raises(UserError, match="no validation split"):
        whole.split("val")


def test_validation_judges_the_ema_weights_when_the_run_keeps_them(tmp_path):
    """With ema > 0 the evaluated weights are the EMA copy, so val_loss (model selection,
    early stopping, keep_best) is the EMA copy's loss, not the raw weights'."""
    data = DataConfig(name="digits", validation=100, max_train=128)
    ds = deepgen.load_dataset(data)
    trainer = _trainer(tmp_path / "run", data=data, epochs=2, val_limit=100, max_steps=6, ema=0.9)
    trainer.fit()
    assert trainer.ema is not None and trainer.eval_model is trainer.ema.model

    def loss_of(model) -> float:
        gen = torch.Generator().manual_seed(trainer.config.seed + 11)
        torch.manual_seed(trainer.config.seed + 13)
        batches = list(deepgen.data.iterate(ds, "val", 32, torch.device("cpu"), gen, limit=100))
        with torch.no_grad():
            return sum(float(model.loss(b).loss) * len(b) for b in batches) / 100

    trainer.model.eval()
    ema, raw = loss_of(trainer.ema.model), loss_of(trainer.model)
    assert ema != pytest.approx(raw, rel=1e-6)  # six steps at decay 0.9: the copies differ
    assert trainer.validate()["val_loss"] == pytest.approx(ema, rel=1e-6)


def test_text_validation_shares_no_character_with_training(tmp_path):
    """Text windows start at every offset: the hold-out leaves block_size - 1 windows out
    between the splits, so the last training window ends before the first validation one."""
    path = tmp_path / "notes.txt"
    path.write_text("".join(chr(97 + (i * 7) % 26) for i in range(3000)), encoding="utf-8")
    whole = deepgen.load_dataset(DataConfig(name=str(path), block_size=16))
    ds = deepgen.load_dataset(DataConfig(name=str(path), block_size=16, validation=50))
    assert len(ds.val) == 50 and len(ds.train) == len(whole.train) - 50 - 15
    assert torch.equal(ds.val.x, whole.train.x[-50:]) and torch.equal(ds.train.x, whole.train.x[: len(ds.train)])
    # Window i covers characters i .. i + 15 of the training text.
    last_train_char = len(ds.train) - 1 + 15
    first_val_char = len(whole.train) - 50
    assert last_train_char < first_val_char


def test_eval_and_score_read_the_validation_split(tmp_path, capsys):
    from deepgen.cli import main

    run = tmp_path / "run"
    args = ["train", "vae", "--data", "digits", "--set", "validation=100", "--set", "max_train=100", "--set", "hidden=16",
            "--epochs", "1", "--set", "progress=false", "--set", "tensorboard=false", "--out", str(run)]
    assert main(args) == 0
    assert main(["eval", str(run), "--metrics", "recon", "--split", "val", "--quiet"]) == 0
    assert "100" in capsys.readouterr().out
    assert main(["score", str(run), "--split", "val", "--by", "recon", "--out", str(tmp_path / "s.csv")]) == 0
    assert len((tmp_path / "s.csv").read_text().strip().splitlines()) == 101  # a header and 100 rows


def test_multi_phase_models_log_val_per_phase_and_lr_per_phase(tmp_path):
    trainer = _trainer(tmp_path / "run", model_name="gan", model_args={}, epochs=1, max_steps=2)
    trainer.fit()
    last = read_metrics(tmp_path / "run")[-1]
    names = [p.name for p in trainer.phases]
    assert len(names) > 1
    for name in names:
        assert f"{name}/val_loss" in last and f"{name}/lr" in last and f"{name}/grad_norm" in last


# -- 5. early stopping ------------------------------------------------------------------------------


def test_early_stop_on_an_overfitting_model_keeps_the_best_epoch(tmp_path):
    """32 training examples, a wide autoencoder: the test loss turns up after a few epochs."""
    data = DataConfig(name="digits", max_train=32)
    trainer = _trainer(
        tmp_path / "run", model_name="ae", data=data, model_args={"hidden": (512,), "latent_dim": 32, "lr": 3e-3},
        epochs=400, early_stop=3, val_limit=200, log_every=50,
    )
    result = trainer.fit()
    assert trainer.stopped_early and result.epochs < 400
    vals = [(r["epoch"], r["val_loss"]) for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    best_epoch, best = min(vals, key=lambda t: t[1])
    assert result.epochs == best_epoch + 3 and trainer.config.keep_best == "val_loss"
    loaded = load_run(tmp_path / "run", checkpoint="best")
    assert loaded.step == best_epoch * trainer.loader.steps_per_epoch
    assert ckpt.find_checkpoint(tmp_path / "run", "best").figure["value"] == pytest.approx(best)
    # The run is over: resuming it takes no step.
    again = Trainer.resume(tmp_path / "run")
    assert again.stopped_early and again.fit().steps == result.steps


def test_early_stop_patience_survives_resume(tmp_path, monkeypatch):
    figures = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9])

    def fake(self, epoch=None):
        return {"val_loss": next(figures)}

    monkeypatch.setattr(Trainer, "validate", fake)
    run = tmp_path / "run"
    first = _trainer(run, epochs=3, early_stop=3)
    first.fit()  # epochs 1-3: best at 2, one bad epoch
    assert not first.stopped_early and first._early["bad_epochs"] == 1
    resumed = Trainer.resume(run, epochs=20)
    assert resumed._early == {"best": 2.0, "best_epoch": 2, "bad_epochs": 1, "stopped": False}
    result = resumed.fit()
    assert resumed.stopped_early and result.epochs == 5  # bad epochs 3, 4, 5
    assert load_run(run, checkpoint="best").step == 2 * resumed.loader.steps_per_epoch


def test_early_stop_refuses_a_figure_that_is_no_validation_loss():
    with pytest.raises(UserError, match="keep_best"):
        _trainer(early_stop=2, keep_best="loss")
    with pytest.raises(UserError, match="val_limit"):
        _config(early_stop=2, val_limit=0)


# -- 6. the log trim on resume is atomic --------------------------------------------------------------


def test_resume_trims_the_log_atomically(tmp_path, monkeypatch):
    log = tmp_path / ckpt.METRICS
    log.write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9, "val_loss": 1.2, "interim": ["val_loss"]}, {"step": 3, "loss": 0.8},
    )))
    used = []
    real = run_logging.atomic_path

    def spy(path, **kw):
        used.append(path)
        return real(path, **kw)

    monkeypatch.setattr(run_logging, "atomic_path", spy)
    run_logging.RunLogger(tmp_path, tensorboard=False, resume_step=2).close()
    assert used == [log]
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.METRICS]


# -- 7. provenance ----------------------------------------------------------------------------------


def test_config_records_provenance(tmp_path):
    _trainer(tmp_path / "run", max_steps=1, epochs=1).fit()
    prov = json.loads((tmp_path / "run" / ckpt.CONFIG).read_text())["provenance"]
    assert set(prov) >= {"argv", "deepgen_version", "git_commit", "hostname", "platform", "python", "torch", "cuda_devices", "date"}
    assert prov["deepgen_version"] == deepgen.__version__ and prov["torch"] == torch.__version__
    assert prov["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40,64}", prov["git_commit"])
    assert isinstance(prov["argv"], list) and isinstance(prov["cuda_devices"], list)


def test_provenance_without_git(tmp_path, monkeypatch):
    assert ckpt.git_commit(tmp_path) is None  # not a repository

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert ckpt.git_commit() is None
    _trainer(tmp_path / "run", max_steps=1, epochs=1).fit()
    assert json.loads((tmp_path / "run" / ckpt.CONFIG).read_text())["provenance"]["git_commit"] is None
