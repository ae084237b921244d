"""Sample-quality metrics in the evaluator, and the leaderboard, with a stand-in feature network.

The feature networks themselves are tested in test_features.py and the pure metric
functions in test_sample_quality.py; here a fixed random projection stands in for the
network so the plumbing (sampling, caching, the floor, the leaderboard) is checked fast.
"""

from __future__ import annotations

import json

import pytest
import torch

import deepgen
from deepgen import bench
from deepgen.data.dataset import KINDS, Dataset
from deepgen.errors import UserError
from deepgen.metrics import evaluate, quality
from deepgen.models.base import GenerativeModel, ModelConfig


class ProjectionFeatures:
    """features(x) = flatten(x) @ W with a fixed W: a deterministic stand-in network."""

    def __init__(self, dim_in: int, dim_out: int = 16) -> None:
        self.w = torch.randn(dim_in, dim_out, generator=torch.Generator().manual_seed(0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1).float() @ self.w

    def describe(self) -> str:
        return "random projection (test stand-in)"


class Replays(GenerativeModel):
    """A 'perfect' model: its samples are the real test examples, in order."""

    data_kinds = KINDS  # it replays data of any kind (the metrics decide what they accept)

    def __init__(self, ds: Dataset, noise: float = 0.0) -> None:
        super().__init__(ModelConfig(), ds.spec)
        self.x = ds.convert(ds.test.x)
        self.noise = noise
        self.pos = 0
        self.p = torch.nn.Parameter(torch.zeros(()))

    def sample(self, n, *, generator=None, cond=None, mean=False):
        out = self.x[self.pos : self.pos + n]
        self.pos += n
        if self.noise:
            out = out + self.noise * torch.randn(out.shape, generator=generator)
        return out


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(quality, "feature_net", lambda ds, ctx: ProjectionFeatures(ds.spec.dim))
    quality._SAMPLE_MEMO.clear()


def test_a_perfect_model_scores_the_floor_and_noise_scores_worse(stand_in):
    ds = deepgen.load_dataset("digits")
    perfect = evaluate(Replays(ds), ds, ["fid", "kid", "pr", "dc"])
    assert perfect["fid"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["precision"] == 1.0 and perfect["recall"] == 1.0 and perfect["coverage"] == 1.0
    assert perfect["quality_n"] == len(ds.test) and "stand-in" in perfect["features"]
    noisy = evaluate(Replays(ds, noise=0.5), ds, ["fid", "pr"])
    assert noisy["fid"] > 1.0 and noisy["precision"] < perfect["precision"]


def test_samples_are_drawn_once_for_several_metrics(stand_in):
    ds = deepgen.load_dataset("digits")
    model = Replays(ds)
    evaluate(model, ds, ["fid", "kid", "pr", "dc"])
    assert model.pos == len(ds.test)  # one pass of sampling served the four metrics


def test_a_changed_sampling_setting_draws_new_samples(stand_in):
    """The memo of samples is keyed by the model's config too: evaluating one model again
    after changing a sampling setting (a diffusion model's steps, a flow's temperature)
    must sample again, not reuse the first setting's samples."""
    ds = deepgen.load_dataset("digits")
    model = Replays(ds)
    evaluate(model, ds, ["fid"])
    evaluate(model, ds, ["kid"])
    assert model.pos == len(ds.test)  # same weights, same config: reused
    model.config, model.pos = ModelConfig(lr=0.5), 0  # another setting; replay from the start
    evaluate(model, ds, ["fid"])
    assert model.pos == len(ds.test)  # sampled again


def test_real_features_are_cached_on_disk(stand_in, tmp_path):
    ds = deepgen.load_dataset("digits")
    evaluate(Replays(ds), ds, ["fid"])
    files = list((tmp_path / "cache" / "deepgen" / "features" / "references").glob("*.safetensors"))
    assert len(files) == 1


def test_floor_is_train_against_test(stand_in):
    ds = deepgen.load_dataset("digits")
    floor = quality.real_vs_real(ds)
    assert floor["quality_n"] == len(ds.test) and floor["fid"] > 0 and 0 < floor["precision"] <= 1


def test_token_data_is_refused():
    spec = deepgen.DataSpec(shape=(8,), kind="tokens", vocab_size=5)
    ds = Dataset("toks", spec, deepgen.data.Split(torch.zeros(4, 8)), deepgen.data.Split(torch.zeros(4, 8)))
    with pytest.raises(UserError, match="token data"):
        evaluate(Replays(ds), ds, ["fid"])


def test_leaderboard_files_rows_and_floor(stand_in, tmp_path, monkeypatch):
    presets = (
        bench.Preset("vae-small", "vae", {"hidden": (32,), "latent_dim": 4}),
        bench.Preset("ae-small", "ae", {"hidden": (32,), "latent_dim": 4}),
    )
    monkeypatch.setitem(bench.PRESETS, "digits", presets)
    record = bench.run_bench("digits", budget=0.5, device="cpu", out=tmp_path / "lb", eval_samples=100, batch_size=32)
    assert [r["label"] for r in record["rows"]] == ["vae-small", "ae-small"]
    vae, ae = record["rows"]
    assert {"fid", "kid", "precision", "recall", "density", "coverage", "nll_bpd", "recon_mse"} <= set(vae)
    assert "nll_bpd" not in ae and "recon_mse" in ae  # an AE has no likelihood
    assert all(r["steps"] > 0 and r["train_seconds"] >= 0.5 for r in record["rows"])
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "real train vs test (floor)" in md and "vae-small" in md and record["hardware"] in md
    assert json.loads((tmp_path / "lb" / "leaderboard.json").read_text())["floor"]["fid"] == record["floor"]["fid"]
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "`" in ln]
    fids = [float(ln.split("|")[2]) for ln in lines]
    assert fids == sorted(fids)


def test_a_crash_in_a_later_preset_keeps_the_rows_already_measured(stand_in, tmp_path, monkeypatch):
    presets = (
        bench.Preset("vae-small", "vae", {"hidden": (32,), "latent_dim": 4}),
        bench.Preset("ae-small", "ae", {"hidden": (32,), "latent_dim": 4}),
    )
    monkeypatch.setitem(bench.PRESETS, "digits", presets)
    real = bench.create_model

    def create(name, *args, **kwargs):
        if name == "ae":
            raise RuntimeError("killed in the second preset")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(bench, "create_model", create)
    with pytest.raises(RuntimeError, match="second preset"):
        bench.run_bench("digits", budget=0.3, device="cpu", out=tmp_path / "lb", eval_samples=100, batch_size=32)
    record = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [r["label"] for r in record["rows"]] == ["vae-small"] and record["complete"] is False
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "vae-small" in md and "Partial: 1 of 2 presets measured so far; still to run: ae-small." in md
    assert not list((tmp_path / "lb").glob(".*.tmp*"))  # nothing half-written beside them (atomic_path's temporaries)


def test_bench_errors():
    with pytest.raises(UserError, match="no leaderboard presets"):
        bench.select_presets("frey-faces", None)
    with pytest.raises(UserError, match="no preset 'vea'"):
        bench.select_presets("mnist", ["vea"])
    assert all(p.model in deepgen.model_names() for ps in bench.PRESETS.values() for p in ps)


@pytest.mark.parametrize(("kwargs", "word"), [({"batch_size": 0}, "batch_size"), ({"budget": 0.0}, "budget"), ({"eval_samples": 0}, "evaluation samples")])
def test_bench_checks_settings_before_writing(stand_in, tmp_path, monkeypatch, kwargs, word):
    monkeypatch.setitem(bench.PRESETS, "digits", (bench.Preset("vae-small", "vae", {"hidden": (32,), "latent_dim": 4}),))
    args = {"budget": 0.5, "eval_samples": 100, "batch_size": 32, **kwargs}
    with pytest.raises(UserError, match=word):
        bench.run_bench("digits", device="cpu", out=tmp_path / "lb", **args)
    assert not (tmp_path / "lb").exists()

