"""`deepgen encode` and `deepgen score`: codes and per-example anomaly scores of a run, and
the one-line errors (exit 2, nothing written) for a model without the capability, data that
does not fit the run, or a wrong output suffix."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from deepgen.cli import main

TINY = ["--epochs", "1", "--set", "max_train=200", "--set", "progress=false", "--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("vae") / "run"
    assert main(["train", "vae", "--data", "digits", "--out", str(run), "--set", "latent_dim=3", "--set", "hidden=32,16", *TINY]) == 0
    return run


def test_encode_writes_codes_and_labels(vae_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "codes.npy"
    assert main(["encode", str(vae_run), "--out", str(out), "--limit", "50"]) == 0
    codes = np.load(out)
    labels = np.load(tmp_path / "codes.labels.npy")
    assert codes.shape == (50, 3) and codes.dtype == np.float32 and np.isfinite(codes).all()
    assert labels.shape == (50,) and set(labels.tolist()) <= set(range(10))
    # The whole train split of the run's own data by default; same codes every call.
    again = tmp_path / "again.npy"
    assert main(["encode", str(vae_run), "--out", str(again), "--limit", "50", "--data", "digits"]) == 0
    np.testing.assert_array_equal(np.load(again), codes)


def test_score_nll_by_default_and_recon(vae_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    assert main(["score", str(vae_run), "--out", str(out), "--limit", "40"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and {"index", "label", "nll_nats", "nll_bpd"} <= set(rows[0])
    nll = np.array([float(r["nll_nats"]) for r in rows])
    bpd = np.array([float(r["nll_bpd"]) for r in rows])
    assert np.isfinite(nll).all() and (bpd > 0).all()
    assert np.corrcoef(nll, bpd)[0, 1] > 0.999  # bits/dim is an affine map of the nats

    rec = tmp_path / "recon.csv"
    assert main(["score", str(vae_run), "--by", "recon", "--out", str(rec), "--limit", "40"]) == 0
    rows = list(csv.DictReader(rec.open()))
    assert {"recon_mse", "recon_nll_nats"} <= set(rows[0]) and all(float(r["recon_mse"]) >= 0 for r in rows)

    npy = tmp_path / "scores.npy"
    assert main(["score", str(vae_run), "--by", "recon", "--out", str(npy), "--limit", "40"]) == 0
    np.testing.assert_allclose(np.load(npy), [float(r["recon_mse"]) for r in rows], rtol=1e-6)


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepgen: error:") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_errors_exit_2_and_write_nothing(vae_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gan = tmp_path / "gan"
    assert main(["train", "gan", "--data", "ring8", "--out", str(gan), "--set", "max_steps=3", *TINY]) == 0
    _fails(capsys, ["encode", str(gan), "--out", str(tmp_path / "c.npy")], "no encoder")
    _fails(capsys, ["score", str(gan), "--out", str(tmp_path / "s.csv")], "likelihood")
    _fails(capsys, ["score", str(vae_run), "--out", str(tmp_path / "s.txt")], ".csv")
    _fails(capsys, ["encode", str(vae_run), "--out", str(tmp_path / "c.csv")], ".npy")
    _fails(capsys, ["encode", str(vae_run), "--data", "moons", "--out", str(tmp_path / "c.npy")], "trained on")
    _fails(capsys, ["score", str(vae_run), "--data", "ring8", "--out", str(tmp_path / "s.csv")], "trained on")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan"]
