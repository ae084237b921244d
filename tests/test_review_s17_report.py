"""Review of what a user sees after training (issue 17): the report, the evaluator's
error paths, the end-of-run pictures and the leaderboard, for the families' odd cases."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import deepgen
from deepgen.cli import main
from deepgen.errors import UserError

TINY = ["--epochs", "1", "--set", "max_train=120", "--set", "hidden=16,8", "--set", "progress=false", "--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE whose validation reads 30 training examples held out (validation=30)."""
    out = tmp_path_factory.mktemp("runs") / "vae-val"
    assert main(["train", "vae", "--data", "digits", "--out", str(out), *TINY, "--set", "validation=30", "--set", "latent_dim=2"]) == 0
    return out


def page_text(path: Path) -> str:
    """The page without its embedded pictures and style sheet."""
    page = path.read_text(encoding="utf-8")
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "IMG", page)
    return re.sub(r"<style>.*?</style>", "", page, flags=re.S)


def test_report_says_val_figures_come_from_the_held_out_split(held_out_run: Path, tmp_path: Path) -> None:
    """With data.validation=N the trainer's val_* read the held-out training examples; the
    page said they were the test split's."""
    assert json.loads((held_out_run / "config.json").read_text())["data"]["validation"] == 30
    out = tmp_path / "r.html"
    assert main(["report", str(held_out_run), "--out", str(out)]) == 0
    text = page_text(out)
    assert "val_*: the validation split held out from training (validation=30" in text
    assert "val_*: the test split" not in text


def test_report_shows_the_text_samples_of_a_token_run(held_out_run: Path, tmp_path: Path) -> None:
    """A token run's samples are samples.txt (no samples.png): the page showed none of them."""
    run = tmp_path / "text-run"
    shutil.copytree(held_out_run, run, symlinks=True)
    (run / "samples.txt").write_text("--- sample 1 ---\nROMEO: <b>thou</b> & thee\n", encoding="utf-8")
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    text = page_text(out)
    assert "<h3>Text samples</h3>" in text
    assert "ROMEO: &lt;b&gt;thou&lt;/b&gt; &amp; thee" in text  # shown, escaped
    assert "<b>thou</b>" not in text


def test_report_prints_a_nan_figure_as_undefined_not_as_a_number(held_out_run: Path, tmp_path: Path) -> None:
    """A NaN figure (a diverged flow's nll, the reverse KL of samples in no mode) vanished
    from a one-run page (its column dropped: an empty row) and printed as 'nan' beside a
    run where it was finite."""
    run = tmp_path / "nan-run"
    shutil.copytree(held_out_run, run, symlinks=True)
    entry = {"values": {"nll": float("nan"), "nll_sem": float("nan"), "nll_note": "exact"}, "split": "test", "n": 10, "step": 1}
    (run / "eval.json").write_text(json.dumps({"nll": {"test": entry}}))  # json writes NaN as eval.json does
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    text = page_text(out)
    table = text.split("<h3>Evaluation (eval.json)</h3>", 1)[1].split("</table>", 1)[0]
    assert "<th>nll (nats)</th>" in table
    assert "<td>undefined (NaN)</td>" in table
    assert not re.search(r"<td>\s*-?nan\s*</td>", table, flags=re.I)


def test_eval_of_a_model_that_cannot_sample_is_one_user_error() -> None:
    """A model whose sample() is not implemented: a sampling metric was a bare
    NotImplementedError (a traceback from `deepgen eval`), and the end-of-run pictures
    crashed before writing any."""
    from deepgen.metrics import evaluate
    from deepgen.models import model_class

    maf = model_class("maf")

    class NoSampler(maf):  # type: ignore[misc, valid-type]
        def sample(self, n, *, generator=None, cond=None, mean=False):  # noqa: ANN001, ANN202
            raise NotImplementedError

    ds = deepgen.load_dataset("ring8", max_train=64)
    model = NoSampler(maf.config_class().replace(layers=1, hidden=(8,)), ds.spec)
    with pytest.raises(UserError, match=r"metric 'modes' calls sample\(\) of model .*does not implement"):
        evaluate(model, ds, ["modes"], limit=20)
    assert math.isfinite(evaluate(model, ds, ["nll"], limit=20)["nll"])  # what needs no sampler still runs


def test_training_and_its_pictures_of_a_model_that_cannot_sample(tmp_path: Path) -> None:
    """The sample-picture callback stopped training at its first sample point, and the
    end-of-run pictures crashed before writing any."""
    from deepgen import SamplePictures, TrainConfig, Trainer
    from deepgen.analysis import write_analysis
    from deepgen.models import model_class

    maf = model_class("maf")

    class NoSampler(maf):  # type: ignore[misc, valid-type]
        def sample(self, n, *, generator=None, cond=None, mean=False):  # noqa: ANN001, ANN202
            raise NotImplementedError

    ds = deepgen.load_dataset("ring8", max_train=64)
    model = NoSampler(maf.config_class().replace(layers=1, hidden=(8,)), ds.spec)
    config = TrainConfig(epochs=1, batch_size=32, progress=False, tensorboard=False, device="cpu")
    result = Trainer(model, ds, config, run_dir=tmp_path / "run", callbacks=[SamplePictures()]).fit()
    assert result.steps == 2
    assert not (tmp_path / "run" / "samples.png").exists()
    names = {p.name for p in write_analysis(tmp_path / "run", model, ds, device="cpu")}
    assert "samples.png" not in names
    assert {"density.png", "latent.png"} <= names  # the pictures that need no sampler


def test_leaderboard_puts_a_nan_fid_last_and_words_bounds_as_eval_does() -> None:
    """A diverged preset's NaN FID sorted anywhere (NaN compares false), and a VAE's note
    said 'a lower bound on log p(x)' beside the NLL column."""
    from deepgen.bench import leaderboard_markdown

    def row(label: str, model: str, fid: float, **extra: object) -> dict:
        return {"label": label, "model": model, "fid": fid, "steps": 10, "train_seconds": 1.0, **extra}

    record = {
        "dataset": "mnist", "budget_seconds": 1.0, "batch_size": 8, "seed": 0, "eval_samples": 10, "hardware": "CPU",
        "torch": torch.__version__, "deepgen": deepgen.__version__, "date": "2026-01-01",
        "floor": {"fid": 0.1, "features": "f"},
        "rows": [
            row("gan-b", "gan", 30.0),
            row("glow", "glow", float("nan"), nll_bpd=float("nan"), nll_note="exact density"),
            row("gan-a", "gan", 20.0),
            row("vae-mlp", "vae", 25.0, nll_bpd=1.5, nll_note="IWAE bound, k=100 importance samples (a lower bound on log p(x))"),
        ],
    }
    md = leaderboard_markdown(record)
    order = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "(`" in line]
    assert order == ["gan-a (`gan`)", "vae-mlp (`vae`)", "gan-b (`gan`)", "glow (`glow`)"]
    glow = next(line for line in md.splitlines() if line.startswith("| glow"))
    assert "nan" not in glow and glow.count("NaN") == 2
    assert "- vae-mlp: likelihood: IWAE bound, k=100 importance samples (nll is an upper bound on -log p(x))." in md
    assert "- glow: likelihood: exact density." in md
