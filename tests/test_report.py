"""``deepgen report``: the HTML page of one run and the comparison of several, its
mistakes (exit 2, nothing written), and the page as a browser renders it."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from deepgen.cli import main

TINY = ["--epochs", "2", "--set", "max_train=200", "--set", "hidden=32,16", "--set", "progress=false", "--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "vae-2d", root / "vae-4d"
    assert main(["train", "vae", "--data", "digits", "--out", str(a), *TINY, "--set", "latent_dim=2"]) == 0
    assert main(["train", "vae", "--data", "digits", "--out", str(b), *TINY, "--set", "latent_dim=4"]) == 0
    assert main(["eval", str(a), "--metrics", "elbo,recon", "--device", "cpu"]) == 0
    return a, b


@pytest.fixture
def stand_in_curves(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the tests of a page's text: the training curves are a stand-in PNG (the page's
    sections as they are). The curves themselves, of one run and of several, are drawn and
    checked by the other tests here (one run's page, every logged key, odd logs)."""
    import io

    from PIL import Image

    import deepgen.report as report

    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    monkeypatch.setattr(report, "curves_png", lambda runs, keys: buf.getvalue() if keys else None)


def images(page: str) -> list[bytes]:
    """The decoded PNGs embedded in a page."""
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_one_run_page_has_figures_curves_and_every_picture(runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = runs
    before = sorted(p.name for p in a.iterdir())
    assert main(["report", str(a)]) == 0
    page = (a / "report.html").read_text()
    assert sorted(p.name for p in a.iterdir()) == sorted([*before, "report.html"])  # one file, nothing else
    pngs = sorted(p.name for p in a.glob("*.png"))
    assert {"samples.png", "latent.png", "manifold.png"} <= set(pngs)
    embedded = images(page)
    assert all(png.startswith(b"\x89PNG") for png in embedded)
    frames = sorted((a / "samples").glob("*.png"))
    assert frames and len(embedded) == len(pngs) + len(frames) + 1  # the folder's pictures, the frames, the curves
    for name in (a / n for n in pngs):
        assert name.read_bytes() in embedded
    assert "vae-2d" in page and "digits" in page and "Training curves" in page
    assert "elbo (test" in page and "recon_mse" in page  # the eval.json figures
    assert "model.latent_dim" in page  # all settings
    assert "wrote" in capsys.readouterr().out


def test_several_runs_are_compared(runs: tuple[Path, Path], tmp_path: Path, stand_in_curves: None) -> None:
    a, b = runs
    out = tmp_path / "sub" / "compare.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    page = out.read_text()
    diff = page[page.index("Settings that differ") : page.index("Training curves, all runs")]
    assert "model.latent_dim" in diff and "model.hidden" not in diff and "train.lr" not in diff
    assert "vae-2d" in page and "vae-4d" in page
    # Two folders of one name are told apart by their paths.
    twin = tmp_path / "other" / a.name
    shutil.copytree(a, twin)
    assert main(["report", str(a), str(twin), "--out", str(tmp_path / "twins.html")]) == 0
    twins = (tmp_path / "twins.html").read_text()
    assert f"<h2>{a}</h2>" in twins and f"<h2>{twin}</h2>" in twins
    assert "Every setting is the same." in twins


def test_report_mistakes_exit_2_and_write_nothing(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = runs
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    (broken / "eval.json").write_text("{not json")
    out = tmp_path / "r.html"
    for argv, word in [
        (["report", str(a), str(not_a_run), "--out", str(out)], "not a run folder"),
        (["report", str(a), "--out", str(tmp_path / "r.pdf")], ".html"),
        (["report", str(broken), "--out", str(out)], "eval.json"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty"]
    # A log that is not UTF-8 is a corrupt run; an output that cannot be written is named.
    garbled = tmp_path / "garbled"
    shutil.copytree(a, garbled)
    (garbled / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 1.0}\n\xff\xfe\n{"step": 2}\n')
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, word in [
        (["report", str(garbled), "--out", str(out)], "UTF-8"),
        (["report", str(a), "--out", str(blocker / "r.html")], f"cannot write {blocker / 'r.html'}"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in err, (argv, err)
    assert not out.exists()


def test_untrusted_names_are_escaped_and_odd_logs_are_read(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    run = tmp_path / "<script>alert(1)</script>"
    shutil.copytree(a, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["loss"] = "nan"  # how the trainer writes a NaN (JSON has none)
    nan_line = json.dumps({**first, "step": first["step"] + 1, "recon": float("nan")})  # Python writes NaN
    (run / "metrics.jsonl").write_text("\n".join([*lines, nan_line, '{"step": 99, "lo']) + "\n")  # killed mid-line
    out = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "step 99" not in page  # the half-written last line is left out


def test_the_page_renders_in_a_browser(runs: tuple[Path, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    a, b = runs
    out = tmp_path / "page.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        browser.close()
    assert len(sizes) >= 4 and all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
    assert headings[:1] == ["Overview"] and "vae-2d" in headings and "vae-4d" in headings
    assert not errors, errors


def test_many_training_frames_are_thinned_evenly(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from deepgen.report import MAX_FRAMES, read_run

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    png = next((run / "samples").glob("*.png")).read_bytes()
    for f in (run / "samples").glob("*.png"):
        f.unlink()
    names = [f"step{i:07d}.png" for i in range(0, 2000, 100)]  # 20 frames
    for n in names:
        (run / "samples" / n).write_bytes(png)
    frames = [p.name for p in read_run(run).frames]
    assert len(frames) == MAX_FRAMES and frames[0] == names[0] and frames[-1] == names[-1]
    assert frames == sorted(set(frames))



def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_eval_figures_say_where_they_came_from_and_when_they_go_stale(runs: tuple[Path, Path], tmp_path: Path, stand_in_curves: None) -> None:
    from deepgen.report import read_run
    from deepgen.training.checkpoint import current_checkpoint

    a, _ = runs
    step = current_checkpoint(a).step
    fresh = read_run(a)
    assert [f.label for f in fresh.figures] == ["elbo (test)", "recon (test)"]
    assert all(f.step == step and not f.stale for f in fresh.figures)
    assert main(["report", str(a), "--out", str(tmp_path / "fresh.html")]) == 0
    page = (tmp_path / "fresh.html").read_text()
    assert f"step {step}" in page and "stale" not in page and "deepgen eval " in page  # the command

    run = _copy_run(a, tmp_path / "run")
    saved = json.loads((run / "eval.json").read_text())
    saved["elbo"]["test"]["step"] = step - 1  # computed before the run's current checkpoint
    saved["fid"] = {"test": {"values": {"fid": 12.5, "quality_n": 500, "features": "deepgen digits classifier (seed 0)"},
                             "split": "test", "n": 500, "step": step, "settings": {}, "seed": 3}}
    saved["nll"] = {"test": {"values": {"nll": 90.1, "nll_note": "IWAE bound, k=5000 importance samples"},
                             "split": "test", "n": 200, "settings": {"iwae_k": "5000"}, "seed": 0}}  # no step recorded
    (run / "eval.json").write_text(json.dumps(saved))
    figures = {f.label: f for f in read_run(run).figures}
    assert figures["elbo (test)"].stale and not figures["fid (test)"].stale and not figures["nll (test)"].stale
    assert figures["nll (test)"].state() == "step unknown"
    assert figures["fid (test)"].features() == "deepgen digits classifier (seed 0)" and figures["fid (test)"].examples() == "500"
    assert figures["nll (test)"].notes() == "nll: IWAE bound, k=5000 importance samples"
    out = tmp_path / "stale.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert f"step {step - 1}, stale: the run&#x27;s current checkpoint is at step {step}" in page
    assert "step unknown" in page and "Where the figures came from" in page
    assert "deepgen digits classifier (seed 0)" in page and "IWAE bound, k=5000" in page and "iwae_k=5000" in page
    assert "<td>quality_n</td>" not in page.split("Where the figures came from")[0]  # a count, not a figure column


def test_cosmetic_settings_are_left_out_of_the_differences(runs: tuple[Path, Path], tmp_path: Path, stand_in_curves: None) -> None:
    from deepgen.report import COSMETIC_SETTINGS, read_run

    a, _ = runs
    assert COSMETIC_SETTINGS <= set(read_run(a).settings())  # every name is a real setting
    run = _copy_run(a, tmp_path / "cosmetic")
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"].update(progress=True, tensorboard=True, log_every=7, sample_every=3, picture_samples=16,
                        checkpoint_every=5, keep_checkpoints=4, threads=2)
    cfg["data"]["workers"] = 3
    (run / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "c.html"
    assert main(["report", str(a), str(run), "--out", str(out)]) == 0
    page = out.read_text()
    diff = page[page.index("Settings that differ") : page.index("Training curves, all runs")]
    assert "Every setting is the same." in diff and "<td>train.log_every</td>" not in diff
    assert "Left out, as they change nothing that is trained: " in diff and "train.log_every" in diff and "data.workers" in diff
    cfg["train"]["grad_clip"] = 1.0  # this one changes what is trained
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["report", str(a), str(run), "--out", str(out)]) == 0
    page = out.read_text()
    diff = page[page.index("Settings that differ") : page.index("Training curves, all runs")]
    assert "<td>train.grad_clip</td>" in diff and "<td>train.progress</td>" not in diff


def test_a_trainer_setting_newer_than_a_run_is_not_a_difference(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A run saved before a TrainConfig field existed (compile_mode) trained with its
    default: beside a newer run it is the same setting, not "-" against a value."""
    from deepgen.report import read_run

    a, _ = runs
    old = _copy_run(a, tmp_path / "old")
    cfg = json.loads((old / "config.json").read_text())
    del cfg["train"]["compile_mode"]
    (old / "config.json").write_text(json.dumps(cfg))
    assert read_run(old).settings()["train.compile_mode"] == read_run(a).settings()["train.compile_mode"] == "default"


def test_validation_values_share_their_training_value_panel() -> None:
    from deepgen.report import curve_panels, train_key_of

    assert [train_key_of(k) for k in ("val_loss", "val/loss", "val/d/loss", "d/val_loss", "loss", "interval", "val_")] == [
        "loss", "loss", "d/loss", "d/loss", None, None, None]
    keys = ["loss", "kl", "lr", "grad_norm", "samples_per_s", "d/loss", "g/loss", "val_loss", "val/d/loss", "g/val_loss", "val_elbo"]
    assert curve_panels(keys) == [["loss", "val_loss"], ["kl"], ["lr"], ["grad_norm"], ["samples_per_s"],
                                  ["d/loss", "val/d/loss"], ["g/loss", "g/val_loss"], ["val_elbo"]]


def test_every_logged_key_is_plotted_and_val_loss_overlays_loss(runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepgen.report as report

    a, _ = runs
    run = _copy_run(a, tmp_path / "logged")
    records = [{"step": s, "epoch": 1, "seconds": 0.1 * s, "loss": 10.0 / s, "lr": 1e-3, "grad_norm": 2.0, "samples_per_s": 500.0}
               for s in range(1, 11)]
    records += [{"step": s, "epoch": s // 5, "val_loss": 3.0 + s / 10} for s in (5, 10)]  # once an epoch, records of their own
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: r["step"])))
    figures = []
    real = report._figure_png

    def capture(fig):  # type: ignore[no-untyped-def]
        figures.append({ax.get_title(): [(ln.get_label(), ln.get_linestyle(), len(ln.get_xdata())) for ln in ax.lines]
                        for ax in fig.axes if ax.get_title()})
        return real(fig)

    monkeypatch.setattr(report, "_figure_png", capture)
    summary = report.read_run(run)
    assert summary.last_values()["val_loss"] == (4.0, 10) and summary.last_values()["lr"] == (1e-3, 10)
    assert report.curves_png([summary], summary.curve_keys()) is not None
    (panels,) = figures
    assert set(panels) == {"loss vs val_loss", "lr", "grad_norm", "samples_per_s"}
    assert panels["loss vs val_loss"] == [("loss", "-", 10), ("val_loss", "--", 2)]
    # The page and the overlay of two runs draw the same panels.
    figures.clear()
    other = _copy_run(run, tmp_path / "logged-2")
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "p.html")]) == 0
    overlay = figures[0]
    assert set(overlay) == {"loss vs val_loss", "lr", "grad_norm", "samples_per_s"}
    assert [label for label, _, _ in overlay["loss vs val_loss"]] == ["logged: loss", "logged: val_loss", "logged-2: loss", "logged-2: val_loss"]
    # The last record is a validation one: the last logged values still hold every key, each with its step.
    page = (tmp_path / "p.html").read_text()
    last = page[page.index("Last logged values") :]
    assert "<td>lr</td><td>0.001</td><td>10</td>" in last and "<td>val_loss</td><td>4</td><td>10</td>" in last
