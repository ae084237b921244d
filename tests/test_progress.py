"""Nothing silent: progress bars on the long steps, Ctrl-C keeps finished metrics, threads.

* Bars: one switch (``progress=True/False``, ``None`` = when stderr is a terminal) shows
  tqdm bars labelled by the running metric for batches, samples, features and feature-
  network training; off, nothing is written.
* ``EvaluationInterrupted``: a KeyboardInterrupt during metric k carries the figures of
  metrics 0..k-1 and the name of metric k; the model's mode is restored.
* ``configure_threads``: sets torch's intra-op threads, idempotently (no timing here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepgen import devices
from deepgen.data.dataset import Dataset, DataSpec, Split
from deepgen.devices import configure_threads, default_threads
from deepgen.errors import UserError
from deepgen.metrics import METRICS, evaluate, quality
from deepgen.metrics.evaluate import EvalContext, EvaluationInterrupted
from deepgen.metrics.progress import progress_switch, resolve_progress
from deepgen.models.base import GenerativeModel, Likelihood, ModelConfig

SHAPE = (1, 4, 4)


class Halves(GenerativeModel):
    """reconstruct(x) = x / 2; log_prob = -sum x; sample = constant 0.5 images."""

    def __init__(self) -> None:
        super().__init__(ModelConfig(), DataSpec(SHAPE, "binary"))
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.interrupt_log_prob = False

    def likelihood_info(self) -> Likelihood:
        return Likelihood("exact", True, "exact")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.interrupt_log_prob:
            raise KeyboardInterrupt
        return -x.reshape(len(x), -1).sum(dim=1)

    def sample(self, n, *, generator=None, cond=None, mean=False):
        return torch.full((n, *SHAPE), 0.5)


def toy_dataset(n: int = 40) -> Dataset:
    x = (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    return Dataset("toy", DataSpec(SHAPE, "binary", name="toy"), Split(x[:8]), Split(x))


# -- progress bars -----------------------------------------------------------------------------


def test_bars_name_the_metric_and_count_batches(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(Halves(), toy_dataset(40), ["recon", "nll"], batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "recon" in err and "nll" in err
    assert "0/3 " in err and "batch" in err  # 40 examples in batches of 16 (leave=False clears the finished bar)


def test_no_bar_when_off_or_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate(Halves(), toy_dataset(), ["recon"], batch_size=16, progress=False)
    evaluate(Halves(), toy_dataset(), ["recon"], batch_size=16)  # None: captured stderr is no terminal
    assert capsys.readouterr().err == ""


def test_default_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert resolve_progress(None) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert resolve_progress(None) is False
    assert resolve_progress(True) is True and resolve_progress(False) is False


def test_the_evaluations_switch_reaches_nested_calls() -> None:
    """progress=None below evaluate() (feature networks, the stacked-MNIST classifier) follows it."""
    with progress_switch(True):
        assert resolve_progress(None) is True
        with progress_switch(False):
            assert resolve_progress(None) is False
        assert resolve_progress(False) is False  # an explicit choice wins
    assert resolve_progress(None) is False  # pytest's stderr is no terminal


def test_context_bar_is_silent_when_off(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = EvalContext(progress=False, metric="m")
    with ctx.progress_bar(10, "work") as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
    with EvalContext(progress=True, metric="m").progress_bar(10, "work", unit="sample") as bar:
        bar.update(10)
    err = capsys.readouterr().err
    assert "m: work" in err and "0/10 " in err and "sample" in err


class Projection:
    def __init__(self, dim: int) -> None:
        self.w = torch.randn(dim, 8, generator=torch.Generator().manual_seed(0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1).float() @ self.w

    def describe(self) -> str:
        return "random projection (test stand-in)"


def test_sampling_and_feature_bars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(quality, "feature_net", lambda ds, ctx: Projection(ds.spec.dim))
    quality._SAMPLE_MEMO.clear()
    evaluate(Halves(), toy_dataset(40), ["fid"], batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "fid: features of the real test split" in err and "0/40 " in err
    assert "fid: sampling" in err and "sample" in err


def test_feature_autoencoder_training_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepgen.metrics.features import feature_extractor

    feature_extractor("digits", cache_dir=tmp_path, epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "training the digits feature autoencoder" in err and "batch" in err
    feature_extractor("digits", cache_dir=tmp_path / "quiet", epochs=1, progress=False)
    assert "feature autoencoder" not in capsys.readouterr().err


def test_feature_classifier_training_bar(real_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepgen.metrics.features import train_classifier

    train_classifier("mnist", data_dir=str(real_data_dir), epochs=1, max_train=512, progress=True)
    err = capsys.readouterr().err
    assert "training the MNIST feature classifier" in err and "0/4 " in err and "step" in err


# -- Ctrl-C keeps the finished metrics -----------------------------------------------------------


@pytest.fixture
def interrupting_metric(monkeypatch: pytest.MonkeyPatch) -> str:
    """A metric registered for this test only: it raises KeyboardInterrupt."""

    def interrupt(model, dataset, ctx):
        raise KeyboardInterrupt

    interrupt.needs = None
    interrupt.description = "raises KeyboardInterrupt (test)"
    interrupt.grad = False
    monkeypatch.setitem(METRICS._items, "test-interrupt", interrupt)
    return "test-interrupt"


def test_interrupt_keeps_the_finished_metrics(interrupting_metric: str) -> None:
    model = Halves()
    model.train()
    with pytest.raises(EvaluationInterrupted) as info:
        evaluate(model, toy_dataset(), ["recon", interrupting_metric, "nll"], batch_size=16)
    e = info.value
    assert isinstance(e, KeyboardInterrupt)
    assert e.interrupted == interrupting_metric
    assert e.results["split"] == "test" and e.results["n"] == 40
    assert e.results == evaluate(Halves(), toy_dataset(), ["recon"], batch_size=16)
    assert not any(k.startswith("nll") for k in e.results)
    assert model.training  # mode restored


def test_interrupt_inside_a_model_call() -> None:
    model = Halves()
    model.eval()
    model.interrupt_log_prob = True
    with pytest.raises(EvaluationInterrupted) as info:
        evaluate(model, toy_dataset(), ["recon", "nll"], batch_size=16, progress=False)
    assert info.value.interrupted == "nll"
    assert "recon_mse" in info.value.results and "nll" not in info.value.results
    assert not model.training
    with pytest.raises(EvaluationInterrupted) as first:  # interrupted in the first metric: split and n only
        evaluate(model, toy_dataset(), ["nll"], batch_size=16)
    assert first.value.results == {"split": "test", "n": 40}


# -- threads ----------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_sets_torch_and_is_idempotent(restore_threads) -> None:
    assert configure_threads(2) == 2 and torch.get_num_threads() == 2
    assert configure_threads(2) == 2 and torch.get_num_threads() == 2
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    chosen = default_threads()
    assert 1 <= chosen <= devices.available_cores()
    assert configure_threads(None) == chosen == torch.get_num_threads()
    assert configure_threads(0) == chosen == torch.get_num_threads()
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(UserError, match="threads must be"):
            configure_threads(bad)  # type: ignore[arg-type]


def test_default_is_one_thread_when_openmp_spins_long(monkeypatch: pytest.MonkeyPatch, restore_threads) -> None:
    monkeypatch.setattr(devices, "SHORT_WAIT", False)
    assert default_threads() == 1
    assert configure_threads(None) == 1 == torch.get_num_threads()


def test_short_wait_is_set_only_before_torch_and_never_over_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.setenv(name, "x")  # recorded, so monkeypatch restores the original state
        monkeypatch.delenv(name)
    assert devices._install_short_wait() is False  # torch is loaded here: too late
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert devices._install_short_wait() is True
    assert {k: os.environ[k] for k in devices.SHORT_WAIT_ENV} == devices.SHORT_WAIT_ENV
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert devices._install_short_wait() is True and os.environ["GOMP_SPINCOUNT"] == "5"  # the user's own


def _devices_imported_first() -> bool:
    init = Path(devices.__file__).with_name("__init__.py").read_text(encoding="utf-8")
    body = [ln for ln in init.splitlines() if ln.startswith(("from .", "import "))]
    return bool(body) and "devices" in body[0]


@pytest.mark.skipif(not _devices_imported_first(), reason="deepgen/__init__.py does not import devices first yet")
def test_importing_deepgen_sets_the_short_wait_before_torch() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    code = "import deepgen, os; from deepgen import devices; print(devices.SHORT_WAIT, os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "1000"]
