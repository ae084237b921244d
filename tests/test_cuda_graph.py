"""CUDA-graph capture of the training step (TrainConfig.cuda_graph).

On the CPU: the settings that cannot work are refused with a message, and optimizer
state moves between implementations (fused, foreach, capturable) in both directions.
On a CUDA machine: every registered model trains with its phases captured, its losses
equal the eager trainer's step by step, a captured WGAN still clips, a captured run's
checkpoint resumes on the CPU, and the lr schedule reaches the captured optimizer.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import deepgen
from deepgen.data import DataConfig
from deepgen.errors import UserError
from deepgen.models import model_names
from deepgen.training import TrainConfig, Trainer, read_metrics, seed_all
from deepgen.training.graphs import load_optimizer_state, optimizer_state, set_lr
from deepgen.training.trainer import lr_factor

DIGITS = DataConfig(name="digits", max_train=256)
RING = DataConfig(name="ring8", num_samples=512)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=32, seed=0, device="cpu", log_every=1, progress=False, tensorboard=False)
    return dataclasses.replace(base, **changes)


def _trainer(name: str, data: DataConfig = DIGITS, run_dir=None, model_args: dict | None = None, **train) -> Trainer:
    ds = deepgen.load_dataset(data)
    seed_all(0)
    model = deepgen.create_model(name, ds, **(model_args or {}))
    return Trainer(model, ds, _config(**train), run_dir, data_config=data)


# -- refused settings (any machine) ----------------------------------------------------------


def test_cuda_graph_on_the_cpu_is_refused_with_a_message():
    with pytest.raises(UserError, match="cuda_graph=true needs a CUDA device"):
        _trainer("ae", cuda_graph=True)


def test_compile_and_cuda_graph_go_together():
    """The compiled loss is warmed up (and so compiled) eagerly, then its step captured."""
    cfg = TrainConfig(compile=True, cuda_graph=True)
    assert cfg.compile and cfg.cuda_graph


def test_compile_mode_reaches_torch_compile_and_needs_compile(monkeypatch):
    """compile_mode is passed to torch.compile as its mode ("default": torch's own default,
    no mode argument); without compile=true it is refused, not ignored."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    _trainer("ae", compile=True, compile_mode="max-autotune-no-cudagraphs")
    _trainer("ae", compile=True)
    assert seen == [{"dynamic": False, "mode": "max-autotune-no-cudagraphs"}, {"dynamic": False, "mode": None}]
    with pytest.raises(UserError, match="compile_mode=max-autotune-no-cudagraphs is a mode of torch.compile: set compile=true"):
        TrainConfig(compile_mode="max-autotune-no-cudagraphs")


# -- optimizer state across implementations (any machine) ------------------------------------


def _adam_after_steps(**flags) -> tuple[torch.nn.Parameter, torch.optim.Adam]:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.Adam([w], lr=1e-2, **flags)
    for _ in range(3):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    return w, opt


def test_loading_keeps_the_running_optimizers_implementation():
    # A state saved by a fused, captured GPU run: flags say fused + capturable, lr 0.003.
    _, saved_opt = _adam_after_steps(foreach=True)
    saved = saved_opt.state_dict()
    saved["param_groups"][0].update(fused=True, capturable=True, foreach=False, lr=3e-3)
    w, opt = _adam_after_steps(foreach=True)
    load_optimizer_state(opt, saved)
    group = opt.param_groups[0]
    assert group["foreach"] is True and not group.get("capturable") and not group.get("fused")
    assert group["lr"] == 3e-3  # the saved hyperparameter is kept
    assert torch.equal(opt.state[w]["exp_avg"], saved_opt.state[saved_opt.param_groups[0]["params"][0]]["exp_avg"])
    opt.zero_grad()
    (w**2).sum().backward()
    opt.step()  # a capturable flag left on would fail here on CPU tensors
    assert opt.state[w]["step"].item() == 4


def test_a_tensor_lr_is_saved_as_a_float_and_updated_in_place():
    w = torch.nn.Parameter(torch.ones(3))
    lr = torch.tensor(0.01)
    opt = torch.optim.Adam([w], lr=lr, foreach=False)
    set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.5  # the same tensor: a graph reads it
    sd = optimizer_state(opt)
    assert isinstance(sd["param_groups"][0]["lr"], float) and sd["param_groups"][0]["lr"] == 0.5
    load_optimizer_state(opt, {**sd, "param_groups": [{**sd["param_groups"][0], "lr": 0.25}]})
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.25


# -- capture on a GPU -------------------------------------------------------------------------


def _cases() -> list[tuple[str, DataConfig]]:
    return [(name, RING if name in ("gan", "wgan", "wgan-gp") else DIGITS) for name in model_names()]


def _assert_same_logs(a_dir, b_dir) -> None:
    a, b = read_metrics(a_dir), read_metrics(b_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if isinstance(value, float) and key not in ("seconds", "samples_per_s") and not key.endswith("_osc"):
                assert rb[key] == pytest.approx(value, rel=1e-3, abs=1e-4), f"step {ra['step']}: {key}"


@CUDA
@pytest.mark.parametrize("name,data", _cases(), ids=[n for n, _ in _cases()])
def test_captured_steps_equal_eager_steps(name, data, tmp_path):
    """Same seed, same batches, same random draws: the captured trainer's logged losses
    match the eager trainer's at every step (fused kernels in both; capture changes when
    kernels are launched, not what they compute)."""
    _trainer(name, data, tmp_path / "eager", device="cuda", max_steps=12).fit()
    graph = _trainer(name, data, tmp_path / "graph", device="cuda", max_steps=12, cuda_graph=True)
    graph.fit()
    assert graph._graphs, "no phase was captured"
    _assert_same_logs(tmp_path / "eager", tmp_path / "graph")


@CUDA
def test_a_captured_compiled_step_equals_the_compiled_step(tmp_path):
    """compile=true with cuda_graph=true: the compiled loss runs its warm-up steps eagerly
    (compilation happens there), then the step with the compiled kernels is captured; its
    logs match the compiled run's without capture at every step."""
    _trainer("ae", DIGITS, tmp_path / "compiled", device="cuda", max_steps=12, compile=True).fit()
    both = _trainer("ae", DIGITS, tmp_path / "both", device="cuda", max_steps=12, compile=True, cuda_graph=True)
    both.fit()
    assert both._graphs, "no phase was captured"
    _assert_same_logs(tmp_path / "compiled", tmp_path / "both")


@CUDA
def test_captured_wgan_still_clips_and_follows_the_lr_schedule(tmp_path):
    """The schedule writes the lr tensor that the captured RMSprop step reads: a captured
    run with a linear decay logs what the eager run logs, and ends at the decayed lr."""
    run = {"device": "cuda", "epochs": 100, "max_steps": 8, "schedule": "linear"}
    _trainer("wgan", RING, tmp_path / "eager", **run).fit()
    trainer = _trainer("wgan", RING, tmp_path / "graph", cuda_graph=True, **run)
    trainer.fit()
    _assert_same_logs(tmp_path / "eager", tmp_path / "graph")
    c = trainer.model.config.clip
    for p in trainer.model.D.parameters():
        assert p.abs().max().item() <= c + 1e-7
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)
    assert lr.item() == pytest.approx(trainer.base_lrs[0] * lr_factor(trainer.config, 7, 8), rel=1e-5)
    assert lr_factor(trainer.config, 7, 8) == pytest.approx(1 / 8)


@CUDA
def test_a_captured_runs_checkpoint_resumes_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    _trainer("wgan-gp", RING, run, device="cuda", epochs=100, max_steps=10, cuda_graph=True).fit()
    resumed = Trainer.resume(run, device="cpu", cuda_graph=False, max_steps=14)
    result = resumed.fit()
    assert result.steps == 14 and all(torch.isfinite(torch.tensor(v)) for v in result.last.values())
    group = resumed.optimizers[0].param_groups[0]
    assert not group.get("capturable") and isinstance(group["lr"], float)


@CUDA
def test_sgd_with_a_schedule_is_refused_under_capture():
    with pytest.raises(UserError, match="SGD"):
        _trainer("gan", RING, model_args={"optimizer": "sgd"}, device="cuda", schedule="cosine", cuda_graph=True)


@CUDA
def test_captured_runs_trained_together_equal_each_alone(tmp_path):
    """fit_together puts captured runs of one device on one stream, in turn: deterministic
    models (no noise) train exactly what each trains alone."""
    from deepgen.training import fit_together

    def run(seed: int, name: str) -> Trainer:
        return _trainer("ae", DIGITS, tmp_path / name, device="cuda", max_steps=9, seed=seed, cuda_graph=True)

    alone = [run(0, "a0"), run(1, "a1")]
    for t in alone:
        t.fit()
    together = [run(0, "t0"), run(1, "t1")]
    fit_together(together)
    assert together[0]._stream is together[1]._stream
    for a, b in zip(alone, together):
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-6)


@CUDA
def test_a_streamed_image_folder_trains_captured_as_eager(tmp_path):
    """Batches from DataLoader workers (pinned memory, copied without blocking) feed a
    captured step: the pin-memory thread's allocations do not break the capture, and the
    captured run logs what the eager run logs."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for j in range(64):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / c / f"{j}.png")
    data = DataConfig(name=str(folder), max_resident_mb=0, workers=2)
    _trainer("dcgan", data, tmp_path / "eager", device="cuda", max_steps=12).fit()
    graph = _trainer("dcgan", data, tmp_path / "graph", device="cuda", max_steps=12, cuda_graph=True)
    assert not graph.dataset.train.resident
    graph.fit()
    assert graph._graphs, "no phase was captured"
    _assert_same_logs(tmp_path / "eager", tmp_path / "graph")


@CUDA
def test_graphed_transformer_decoding_equals_eager_decoding():
    """The CUDA-graphed decoding step replays to the eager step's logits at every position,
    and graph sampling with one seed equals eager sampling with that seed."""
    from deepgen.data.dataset import DataSpec

    spec = DataSpec((40,), "tokens", vocab_size=11)
    torch.manual_seed(0)
    model = deepgen.create_model("transformer", spec, layers=2, heads=2, width=32, dropout=0.0).cuda().eval()
    first = model._starts(None, 4)
    graphed, eager = model.decoder(first), dataclasses.replace(model.config, decode_graph=False)
    assert graphed.graph is not None
    plain = deepgen.create_model("transformer", spec, eager).cuda().eval()
    plain.load_state_dict(model.state_dict())
    ref = plain.decoder(first)
    assert ref.graph is None
    ids = torch.randint(0, 11, (4, 40), device="cuda")
    for t in range(40):
        prev = ids[:, t - 1 : t] if t else ids[:, :1]
        torch.testing.assert_close(graphed(prev, t).clone(), ref(prev, t), rtol=1e-4, atol=1e-4)
    a = model.sample(4, generator=torch.Generator("cuda").manual_seed(3))
    b = plain.sample(4, generator=torch.Generator("cuda").manual_seed(3))
    assert torch.equal(a, b)
