"""The trainer: schedules, clipping, EMA, bf16, the NaN guard, the run folder format, resume."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import deepgen
from deepgen.data import DataConfig
from deepgen.errors import TrainingDiverged, UserError
from deepgen.pictures import SamplePictures
from deepgen.training import TrainConfig, Trainer, load_run, read_metrics, seed_all
from deepgen.training.trainer import lr_factor, resolve_device

DATA = DataConfig(name="digits", max_train=256)
SMALL = {"hidden": (32,), "latent_dim": 4}


def _config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=32, device="cpu", log_every=1, progress=False, tensorboard=False)
    return dataclasses.replace(base, **changes)


def _trainer(run_dir, model_name="vae", callbacks=(), **train) -> Trainer:
    ds = deepgen.load_dataset(DATA)
    seed_all(0)
    model = deepgen.create_model(model_name, ds, **SMALL)
    return Trainer(model, ds, _config(**train), run_dir, data_config=DATA, callbacks=callbacks)


def test_lr_schedules():
    cfg = TrainConfig(schedule="cosine", warmup_steps=10)
    assert lr_factor(cfg, 0, 110) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 110) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.5)
    assert lr_factor(cfg, 110, 110) == pytest.approx(0.0, abs=1e-12)
    lin = TrainConfig(schedule="linear")
    assert lr_factor(lin, 25, 100) == pytest.approx(0.75)
    assert lr_factor(TrainConfig(), 50, 100) == 1.0


def test_the_iwae_staircase_keeps_the_papers_stages():
    """Burda et al. 2016: 3^i of 3,280 epochs at 10^(-i/7), i = 0..7. Over 3,280 steps each
    stage starts where the paper's epochs put it; a run of any other length scales them."""
    cfg = TrainConfig(schedule="iwae")
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # sum of 3^j for j < i
    for i, start in enumerate(starts):
        assert lr_factor(cfg, start, 3280) == pytest.approx(10 ** (-i / 7)), i
        if start:
            assert lr_factor(cfg, start - 1, 3280) == pytest.approx(10 ** (-(i - 1) / 7)), i
    assert lr_factor(cfg, 3279, 3280) == pytest.approx(10 ** (-1))
    assert lr_factor(cfg, 3280 * 10 - 1, 32800) == pytest.approx(10 ** (-1))  # the last stage, scaled
    assert lr_factor(cfg, 1210, 32800) == pytest.approx(10 ** (-5 / 7))  # stage 5 starts at 121/3280 of the run
    assert lr_factor(cfg, 1209, 32800) == pytest.approx(10 ** (-4 / 7))
    warm = TrainConfig(schedule="iwae", warmup_steps=20)
    assert lr_factor(warm, 9, 3300) == pytest.approx(0.5) and lr_factor(warm, 20, 3300) == 1.0


def test_lr_follows_schedule_in_the_optimizer(tmp_path):
    trainer = _trainer(None, schedule="linear", epochs=1)
    trainer.fit()
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    total = trainer.total_steps
    assert lr == pytest.approx(trainer.base_lrs[0] * (1 - (total - 1) / total))


def test_run_folder_layout_has_no_pickles_and_no_temp_files(tmp_path):
    run = tmp_path / "run"
    _trainer(run, callbacks=[SamplePictures()], tensorboard=True).fit()
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "trainer_state", "metrics.jsonl", "samples.png", "tb"} <= names
    assert not [n for n in names if n.startswith(".")], f"temporary files left: {names}"
    assert sorted(p.name for p in (run / "trainer_state").iterdir()) == ["state.json", "tensors.safetensors"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "vae" and cfg["model_config"]["latent_dim"] == 4 and cfg["data"]["name"] == "digits"
    assert list((run / "tb").iterdir()), "TensorBoard event file missing"
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert all(math.isfinite(r["loss"]) for r in records)


def test_training_lowers_the_loss(tmp_path):
    trainer = _trainer(None, epochs=6)
    trainer.fit()
    # fresh loss vs final: the ELBO improves a lot in a few epochs on digits
    assert trainer.last["loss"] < 0.8 * read_first_loss(trainer)


def read_first_loss(trainer: Trainer) -> float:
    ds = trainer.dataset
    seed_all(0)
    fresh = deepgen.create_model("vae", ds, **SMALL)
    batch = deepgen.data.ResidentLoader(ds, 256, "cpu", seed=0).next()
    with torch.no_grad():
        return float(fresh.loss(batch, "main").loss)


def test_grad_clip_logs_the_norm_and_bf16_trains(tmp_path):
    trainer = _trainer(None, grad_clip=0.5, bf16=True, epochs=1)
    trainer.fit()
    assert "grad_norm" in trainer.last and math.isfinite(trainer.last["grad_norm"])
    assert math.isfinite(trainer.last["loss"])


def test_ema_weights_are_saved_and_used_for_loading(tmp_path):
    run = tmp_path / "ema"
    trainer = _trainer(run, ema=0.9)
    trainer.fit()
    assert (run / "ema.safetensors").is_file()
    loaded = load_run(run)
    ema_state = trainer.ema.model.state_dict()
    assert all(torch.equal(v, ema_state[k]) for k, v in loaded.model.state_dict().items())
    raw = load_run(run, use_ema=False)
    assert any(not torch.equal(v, ema_state[k]) for k, v in raw.model.state_dict().items())


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "nan"
    ds = deepgen.load_dataset(DATA)
    seed_all(0)
    model = deepgen.create_model("vae", ds, **SMALL)
    original = model.loss
    calls = []

    def poisoned(batch, phase):
        out = original(batch, phase)
        calls.append(1)
        if len(calls) >= 8:  # the 8th step's loss is NaN
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(model, "loss", poisoned)
    trainer = Trainer(model, ds, _config(checkpoint_every=3, epochs=3), run, data_config=DATA)
    with pytest.raises(TrainingDiverged, match="NaN/Inf by step 8.*last good checkpoint"):
        trainer.fit()
    good = load_run(run)
    assert good.step == 6
    assert all(torch.isfinite(p).all() for p in good.model.parameters())
    resumed = Trainer.resume(run)
    assert resumed.step == 6


def test_resume_with_more_epochs_equals_a_longer_run(tmp_path):
    long = _trainer(tmp_path / "long", epochs=3)
    long.fit()
    short = _trainer(tmp_path / "short", epochs=2)
    short.fit()
    more = Trainer.resume(tmp_path / "short", epochs=3)
    assert more.step == short.step
    more.fit()
    assert more.step == long.step
    a, b = read_metrics(tmp_path / "long"), read_metrics(tmp_path / "short")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert json.loads((tmp_path / "short" / "config.json").read_text())["train"]["epochs"] == 3


def test_random_draws_between_resume_and_fit_do_not_change_the_run(tmp_path):
    """The checkpoint's random streams are set when fit starts: a caller who draws random
    numbers (or builds another model) between Trainer.resume and fit still gets the
    uninterrupted run, and resume itself leaves the caller's streams as they were."""
    long = _trainer(tmp_path / "long", epochs=3)
    long.fit()
    _trainer(tmp_path / "short", epochs=2).fit()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    more = Trainer.resume(tmp_path / "short", epochs=3)
    assert torch.equal(torch.rand(3), expected)  # resume did not touch the global stream
    torch.randn(1000)  # the caller's own draws
    more.save_checkpoint()  # before fit: it writes the checkpoint's streams, not the caller's
    again = Trainer.resume(tmp_path / "short", epochs=3)
    torch.randn(10)
    again.fit()
    a, b = read_metrics(tmp_path / "long"), read_metrics(tmp_path / "short")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        Trainer.resume(tmp_path)
    run = tmp_path / "r"
    _trainer(run, epochs=1).fit()
    (run / "trainer_state" / "state.json").unlink()
    with pytest.raises(UserError, match="trainer_state/ is missing"):
        Trainer.resume(run)


def test_corrupt_weights_are_a_user_error(tmp_path):
    run = tmp_path / "c"
    _trainer(run, epochs=1).fit()
    (run / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="missing or corrupt"):
        load_run(run)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="Accepted: auto, cpu"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_oscillation_measure_and_histograms(tmp_path):
    ds = deepgen.load_dataset(DATA)
    seed_all(0)
    model = deepgen.create_model("vae", ds, **SMALL)
    model.oscillation_keys = ("loss",)  # as a GAN declares its D and G losses
    model.histograms = lambda: {"w": model.decoder.net[0].weight}  # the HasHistograms capability
    run = tmp_path / "osc"
    Trainer(model, ds, _config(osc_window=3, tensorboard=True), run, data_config=DATA, callbacks=[SamplePictures()]).fit()
    records = read_metrics(run)
    losses = [r["loss"] for r in records]
    for i, r in enumerate(records):
        window = losses[max(0, i - 2) : i + 1]
        assert r["loss_osc"] == pytest.approx((max(window) - min(window)) / 2)
    assert (run / "histograms.png").is_file()


def test_max_seconds_stops_at_a_step_boundary_and_checkpoints(tmp_path):
    run = tmp_path / "timed"
    trainer = _trainer(run, epochs=1000, max_seconds=0.3)
    result = trainer.fit()
    assert 0 < result.steps < 1000 * 8 and result.seconds >= 0.3
    assert load_run(run).step == result.steps  # the stop wrote a checkpoint


def test_fit_together_trains_what_each_fit_trains(tmp_path):
    """Deterministic models (no noise): interleaving the steps of two runs changes nothing."""
    from deepgen.training import fit_together

    def ae(seed: int, run: str) -> Trainer:
        ds = deepgen.load_dataset(DATA)
        seed_all(seed)
        model = deepgen.create_model("ae", ds, hidden=(32,), latent_dim=4)
        return Trainer(model, ds, _config(seed=seed, max_steps=11), tmp_path / run, data_config=DATA)

    alone = [ae(0, "a0"), ae(1, "a1")]
    for t in alone:
        t.fit()
    together = [ae(0, "t0"), ae(1, "t1")]
    results = fit_together(together)
    assert [r.steps for r in results] == [11, 11]
    for a, b, name in zip(alone, together, ("0", "1")):
        clocks = ("seconds", "samples_per_s")  # wall-clock figures differ run to run
        assert read_metrics(tmp_path / f"a{name}") == [
            {**r, **{k: pytest.approx(r[k], abs=1e9) for k in clocks if k in r}} for r in read_metrics(tmp_path / f"t{name}")
        ]
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            assert torch.equal(pa, pb)
    assert not torch.equal(next(together[0].model.parameters()), next(together[1].model.parameters()))


def test_fit_together_closes_every_run_when_one_fails(tmp_path):
    from deepgen.training import fit_together

    good = _trainer(tmp_path / "good", max_steps=50)
    bad = _trainer(tmp_path / "bad", max_steps=50)
    bad._loss = lambda batch, phase: (_ for _ in ()).throw(RuntimeError("boom"))  # fails at its first step
    with pytest.raises(RuntimeError, match="boom"):
        fit_together([good, bad])
    assert good.step == 1  # stopped after its first step, its logger closed


def test_a_run_whose_saved_standardisation_differs_is_refused(tmp_path):
    """A table's standardisation is recomputed when a run reloads its data; when it differs
    from the statistics the run saved (other rows, an older deepgen), resume and load_run's
    data are one clear UserError, not inputs other than those it trained on."""
    import numpy as np

    from deepgen.data import DataConfig
    from deepgen.io import read_tensors, save_tensors
    from deepgen.training import checkpoint as ckpt

    x = np.random.default_rng(0).normal(2.0, 3.0, size=(200, 3))
    np.save(tmp_path / "t.npy", x)
    data = DataConfig(name=str(tmp_path / "t.npy"), validation=20)
    ds = deepgen.load_dataset(data)
    seed_all(0)
    run = tmp_path / "run"
    Trainer(deepgen.create_model("vae", ds, hidden=(8,), latent_dim=2), ds, _config(epochs=1), run, data_config=data).fit()
    assert Trainer.resume(run, epochs=2).step > 0 and load_run(run).load_dataset().state["mean"].shape == (3,)
    state = {k: v.clone() for k, v in read_tensors(run / ckpt.DATA_STATE).items()}
    state["mean"] += 0.5  # what the statistics would be if fit on other rows
    save_tensors(run / ckpt.DATA_STATE, state)
    with pytest.raises(UserError, match="preprocessing statistics .*differ from the ones the run saved"):
        Trainer.resume(run, epochs=2)
    with pytest.raises(UserError, match="preprocessing statistics"):
        load_run(run).load_dataset()


def test_cudnn_benchmark_is_a_cuda_setting_recorded_in_the_run(tmp_path):
    """cudnn_benchmark=true is torch's process-wide flag for CUDA convolutions: on the CPU
    the flag is left as it was, and the run folder records the setting (a resumed run
    gets it back)."""
    before = torch.backends.cudnn.benchmark
    trainer = _trainer(tmp_path / "run", cudnn_benchmark=True)
    trainer.fit()
    assert torch.backends.cudnn.benchmark is before
    assert Trainer.resume(tmp_path / "run").config.cudnn_benchmark is True
    assert TrainConfig().cudnn_benchmark is False
