"""The command line: train -> sample -> eval round trips, resume, listings, the demo, and
that every user mistake exits 2 with one line, no traceback and no run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from deepgen.cli import main
from deepgen.models import model_names

TINY = ["--epochs", "1", "--set", "max_train=200", "--set", "hidden=32,16", "--set", "progress=false", "--set", "tensorboard=false"]


def train(tmp_path: Path, model: str = "vae", data: str = "digits", *extra: str, out: str = "run") -> Path:
    run = tmp_path / out
    assert main(["train", model, "--data", data, "--out", str(run), *TINY, *extra]) == 0
    return run


def metrics_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", [m for m in ("vae", "ae") if m in model_names()])
def test_train_sample_eval_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str) -> None:
    run = train(tmp_path, model, "digits", "--set", "latent_dim=2")
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out and "steps:" in out and "last losses:" in out
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "samples.png",
                 "reconstructions.png", "latent.png", "manifold.png", "interpolation.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"] == model

    png, npy, csv = tmp_path / "s.png", tmp_path / "s.npy", tmp_path / "s.csv"
    assert main(["sample", str(run), "--n", "9", "--out", str(png)]) == 0
    assert main(["sample", str(run), "--n", "5", "--out", str(npy), "--draw"]) == 0
    assert main(["sample", str(run), "--n", "3", "--out", str(csv)]) == 0
    assert png.stat().st_size > 0
    arr = np.load(npy)
    assert arr.shape == (5, 1, 8, 8)
    rows = csv.read_text().splitlines()
    assert len(rows) == 4 and len(rows[0].split(",")) == 64  # header + 3 rows of 64 pixels

    metrics = "recon,elbo,nll" if model == "vae" else "recon"
    capsys.readouterr()
    extra = ["--set", "iwae_k=5"] if model == "vae" else []
    # No --metrics: those of recon, elbo and nll the model supports (all three for a VAE).
    assert main(["eval", str(run), "--device", "cpu", "--limit", "50", *extra]) == 0
    table = capsys.readouterr().out
    assert "recon_mse" in table and "n" in table
    report = json.loads((run / "eval.json").read_text())
    for name in metrics.split(","):
        entry = report[name]["test"]
        assert entry["n"] == 50 and entry["split"] == "test" and entry["seconds"] >= 0
        assert "eval" in entry["command"] and entry["values"]
    # A second evaluation merges: the earlier metrics stay, the new split is added.
    assert main(["eval", str(run), "--metrics", "recon", "--split", "train", "--limit", "20", "--device", "cpu"]) == 0
    report2 = json.loads((run / "eval.json").read_text())
    assert set(report2) == set(report) and report2["recon"]["train"]["n"] == 20
    assert report2["recon"]["test"] == report["recon"]["test"]


def test_eval_default_metrics_are_what_the_model_supports() -> None:
    import deepgen
    from deepgen.errors import UserError
    from deepgen.metrics import default_metrics

    ds = deepgen.load_dataset("ring8")
    assert default_metrics(deepgen.create_model("vae", ds)) == ["recon", "elbo", "nll"]
    assert default_metrics(deepgen.create_model("ae", ds)) == ["recon"]
    for name in ("maf", "ddpm"):
        assert default_metrics(deepgen.create_model(name, ds)) == ["nll"], name
    assert default_metrics(deepgen.create_model("made", deepgen.load_dataset("digits"))) == ["nll"]
    with pytest.raises(UserError, match=r"none of the default metrics.*--metrics.*supports: .*fid"):
        default_metrics(deepgen.create_model("gan", ds))


def test_toy_2d_run_writes_scatters_and_csv(tmp_path: Path) -> None:
    run = train(tmp_path, "vae", "moons", "--set", "num_samples=400")
    assert (run / "samples.png").is_file() and (run / "latent.png").is_file()
    assert not (run / "reconstructions.png").exists()  # images only
    out = tmp_path / "points.csv"
    assert main(["sample", str(run), "--n", "7", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "x0,x1" and len(lines) == 8


def test_conditional_sampling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path, "vae", "digits", "--set", "conditional=true")
    out = tmp_path / "c.npy"
    assert main(["sample", str(run), "--n", "4", "--cond", "3", "--out", str(out)]) == 0
    assert np.load(out).shape == (4, 1, 8, 8)
    capsys.readouterr()
    assert main(["sample", str(run), "--cond", "10", "--out", str(out)]) == 2
    assert "0..9" in capsys.readouterr().err


def test_sample_set_overrides_sampling_knobs_of_the_saved_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import deepgen.training as training

    run = train(tmp_path, "vae", "digits")
    loaded = []
    original = training.load_run
    monkeypatch.setattr(training, "load_run", lambda *a, **k: loaded.append(original(*a, **k)) or loaded[-1])
    out = tmp_path / "k.npy"
    # A VAE has no sampling settings; its evaluation ones (iwae_k) are eval's and score's,
    # and sample, which never reads them, refuses them rather than ignoring them.
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "3", "--set", "iwae_k=7", "--out", str(out)]) == 2
    assert "'iwae_k' is an evaluation setting" in capsys.readouterr().err and not out.exists()
    flow = tmp_path / "flow" / "run"  # (TINY's hidden sizes vector networks; an image realnvp refuses it)
    image_flow = ["--epochs", "1", *(a for kv in ("max_train=200", "progress=false", "tensorboard=false", "scales=1", "couplings=1", "channels=4")
                                     for a in ("--set", kv))]
    assert main(["train", "realnvp", "--data", "digits", "--out", str(flow), *image_flow]) == 0
    assert main(["sample", str(flow), "--n", "3", "--set", "temperature=0.5", "--out", str(out)]) == 0
    assert np.load(out).shape == (3, 1, 8, 8)
    assert loaded[-1].model.config.temperature == 0.5
    assert main(["sample", str(flow), "--n", "3", "--set", "model.temperature=0.25", "--out", str(out)]) == 0
    assert loaded[-1].model.config.temperature == 0.25
    assert json.loads((flow / "config.json").read_text())["model_config"]["temperature"] == 1.0  # the run keeps its own
    saved = json.loads((run / "config.json").read_text())["model_config"]
    # A setting given at the value it was trained with changes nothing, so it is accepted.
    assert main(["sample", str(run), "--n", "3", "--set", f"latent_dim={saved['latent_dim']}", "--out", str(out)]) == 0
    bad = tmp_path / "bad.npy"
    for sets, words in [
        (["--set", "iwae=3"], ["'iwae'"]),  # no such setting
        (["--set", "iwae_k=many"], ["iwae_k"]),  # not a number
        (["--set", "latent_dim=3"], ["latent_dim=3", "trained with 16", "iwae_chunk, iwae_k"]),  # another network
        (["--set", "likelihood=gaussian"], ["likelihood", "defines"]),  # the same parameters, another model
    ]:
        capsys.readouterr()
        assert main(["sample", str(run), *sets, "--out", str(bad)]) == 2, sets
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words) and "Traceback" not in err, err
    assert not bad.exists()


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = load_file(str(train(tmp_path, "vae", "digits", "--seed", "3", out="a") / "model.safetensors"))
    b = load_file(str(train(tmp_path, "vae", "digits", "--seed", "3", out="b") / "model.safetensors"))
    c = load_file(str(train(tmp_path, "vae", "digits", "--seed", "4", out="c") / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    assert any(not (a[k] == c[k]).all() for k in a)


# -- resume and overwrite --------------------------------------------------------------------


def test_resume_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path, "vae", "digits", "--set", "log_every=1")
    steps_before = metrics_steps(run)
    config = json.loads((run / "config.json").read_text())
    assert main(["train", "vae", "--resume", str(run), "--epochs", "3"]) == 0
    steps_after = metrics_steps(run)
    assert steps_after[: len(steps_before)] == steps_before
    assert steps_after[-1] > steps_before[-1] and steps_after == sorted(steps_after)
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["train"]["epochs"] == 3 and resumed["model_config"] == config["model_config"]
    assert "->" in capsys.readouterr().out

    # Finished runs, model/data settings and another model name are refused; nothing changes.
    for argv, word in [
        (["train", "--resume", str(run)], "already finished"),
        (["train", "--resume", str(run), "--epochs", "5", "--set", "latent_dim=3"], "latent_dim"),
        (["train", "--resume", str(run), "--epochs", "5", "--set", "max_train=10"], "max_train"),
        (["train", "ae", "--resume", str(run), "--epochs", "5"], "'vae' run"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert word in err and "Traceback" not in err
    assert metrics_steps(run) == steps_after
    assert json.loads((run / "config.json").read_text()) == resumed


def test_existing_run_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path)
    (run / "eval.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["train", "vae", "--data", "digits", "--out", str(run), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "vae", "--data", "digits", "--out", str(run), *TINY, "--overwrite"]) == 0
    assert not (run / "eval.json").exists()  # the old run's files are gone
    assert (run / "notes.txt").read_text() == "mine"  # the user's are not


def test_overwrite_removes_every_picture_of_the_old_run(tmp_path: Path) -> None:
    """A run of another model over an autoregressive one leaves none of its files
    (completions.png was once left behind)."""
    run = tmp_path / "run"
    small = ["--epochs", "1", "--set", "max_train=64", "--set", "progress=false", "--set", "tensorboard=false"]
    assert main(["train", "pixelcnn", "--data", "digits", "--out", str(run), *small, "--set", "channels=8", "--set", "layers=2", "--set", "out_hidden=8"]) == 0
    assert (run / "completions.png").is_file()
    assert main(["train", "vae", "--data", "digits", "--out", str(run), *TINY, "--overwrite"]) == 0
    assert not (run / "completions.png").exists()


def test_interrupt_before_first_checkpoint_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from deepgen.training import Trainer

    def interrupted(self: Trainer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--out", str(run), *TINY]) == 130
    assert not run.exists()
    assert "Traceback" not in capsys.readouterr().err


# -- listings and the demo -------------------------------------------------------------------


def test_models_and_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vae" in out and "encode" in out
    assert main(["models", "vae"]) == 0
    out = capsys.readouterr().out
    assert "latent_dim" in out and "int" in out and "iwae_k" in out
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "moons", "ring8", "mnist"):
        assert name in out


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["train", "--help"], ["sample", "--help"], ["eval", "--help"], ["demo", "--help"]):
        assert main(argv) == 0
    assert "examples" in capsys.readouterr().out


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    for name in ("samples.png", "manifold.png", "latent.png", "reconstructions.png", "interpolation.png"):
        assert (out / name).is_file() and name in text
    assert f"deepgen sample {out}" in text
    assert main(["demo", "--epochs", "1", "--out", str(out), "--quiet"]) == 0  # a second demo replaces the first


def test_faces_demo_on_frey_faces_and_on_a_folder_of_faces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``deepgen demo faces``: a conv VAE with a 2-D latent on Frey faces (28x20) and its
    pictures; ``--data FOLDER`` reads any folder of images in grey at that size."""
    from PIL import Image

    out = tmp_path / "faces"
    assert main(["demo", "faces", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    for name in ("samples.png", "manifold.png", "interpolation.png", "reconstructions.png"):
        assert (out / name).is_file() and name in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "vae" and cfg["data"]["name"] == "frey-faces" and cfg["model_config"]["network"] == "conv"
    assert cfg["spec"]["shape"] == [1, 28, 20] and cfg["model_config"]["latent_dim"] == 2
    folder = tmp_path / "my-faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(folder / f"face{i}.png")
    mine = tmp_path / "mine"
    assert main(["demo", "faces", "--data", str(folder), "--epochs", "1", "--out", str(mine), "--quiet"]) == 0
    assert json.loads((mine / "config.json").read_text())["spec"]["shape"] == [1, 28, 20] and (mine / "manifold.png").is_file()
    capsys.readouterr()
    assert main(["demo", "digits", "--data", str(folder), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--data applies to the faces demo" in capsys.readouterr().err and not (tmp_path / "x").exists()


# -- user mistakes ---------------------------------------------------------------------------


@pytest.fixture
def no_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No dataset anywhere: DEEPGEN_DATA unset, HOME and the cache pointed at empty folders."""
    monkeypatch.delenv("DEEPGEN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


TRAIN_MISTAKES = [
    (["train", "vea", "--data", "digits"], "'vea'"),
    (["train", "vae", "--data", "digitz"], "'digitz'"),
    (["train", "vae", "--data", "digits", "--set", "latnt_dim=2"], "'latnt_dim'"),
    (["train", "vae", "--data", "digits", "--set", "latent_dim=abc"], "latent_dim"),
    (["train", "vae", "--data", "digits", "--set", "epochs=0"], "epochs"),
    (["train", "vae", "--data", "digits", "--epochs", "0"], "epochs"),
    (["train", "vae", "--data", "digits", "--set", "lr=-1"], "lr"),
    (["train", "vae", "--data", "digits", "--set", "lr=inf"], "finite"),
    (["train", "vae", "--data", "ring8", "--set", "toy_noise=nan"], "finite"),
    (["train", "vae", "--data", "digits", "--set", "latent_dim"], "key=value"),
    (["train", "vae", "--data", "digits", "--device", "tpu"], "'tpu'"),
    (["train", "vae", "--data", "moons", "--set", "seed=1"], "ambiguous"),
    (["train", "vae", "--data", "swissroll", "--set", "conditional=true", "--set", "num_samples=100"], "conditional"),
    (["train", "vae"], "--data"),
    (["train", "--data", "digits"], "MODEL"),
    (["train", "vae", "--data", "mnist", "--data-dir", "{empty}"], "mnist"),
    # Diverges before the first checkpoint: the half-written folder is removed.
    (["train", "vae", "--data", "digits", *TINY, "--set", "max_train=600", "--set", "lr=1e30", "--set", "log_every=1"], "diverged"),
]


@pytest.mark.parametrize(("argv", "word"), TRAIN_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_train_mistake_exits_2_and_writes_nothing(
    tmp_path: Path, no_data_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], word: str | None
) -> None:
    run = tmp_path / "out"
    argv = [a.replace("{empty}", str(no_data_env)) for a in argv]
    assert main([*argv, "--out", str(run)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepgen: error: "), captured.err
    if word is not None:
        assert word in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not run.exists()


def test_eval_and_sample_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    cases = [
        (["eval", str(not_a_run)], "not a run folder"),
        (["eval", str(tmp_path / "missing")], "not a run folder"),
        (["eval", str(run), "--metrics", "foo", "--device", "cpu"], "'foo'"),
        (["eval", str(run), "--metrics", "recon", "--set", "iwae=3", "--device", "cpu"], "'iwae'"),
        (["sample", str(run), "--out", str(tmp_path / "x.gif")], ".png"),
        (["sample", str(run), "--cond", "3", "--out", str(tmp_path / "x.png")], "unconditional"),
        (["sample", str(run), "--n", "0", "--out", str(tmp_path / "x.png")], "--n"),
    ]
    if "ae" in model_names():
        ae_run = train(tmp_path, "ae", out="ae")
        cases.append((["eval", str(ae_run), "--metrics", "recon,elbo", "--device", "cpu"], "elbo"))
    for argv, word in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in err, (argv, err)
    assert not (run / "eval.json").exists() and not not_a_run.joinpath("eval.json").exists()
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.gif").exists()


def test_diverging_wgan_with_tensorboard_stops_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The critic's weight histograms go to TensorBoard at the log point where the NaN guard
    # reads the losses: NaN weights must not raise there before the guard's message.
    pytest.importorskip("tensorboard")
    run = tmp_path / "wgan"
    argv = ["train", "wgan", "--data", "ring8", "--epochs", "3", "--out", str(run),
            "--set", "lr=1e30", "--set", "num_samples=500", "--set", "progress=false", "--set", "log_every=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "diverged" in lines[0] and "Traceback" not in err, err


def test_resume_from_corrupt_weights_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "Traceback" not in err, err


@pytest.mark.parametrize("shape", [(10, 3), (5,)])
def test_tiny_array_data_trains_and_plots(tmp_path: Path, shape: tuple[int, ...]) -> None:
    # 10 rows leave one test example: its latent scatter has a single code to project.
    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).random(shape, dtype=np.float32))
    run = train(tmp_path, "ae", str(data))
    assert (run / "latent.png").is_file()


def test_argparse_mistakes_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["train", "vae", "--data", "digits", "--bogus"]) == 2
    assert main(["eval", "run", "--split", "valid"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# -- python -m deepgen ------------------------------------------------------------------------


def _python_m(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """``python -m deepgen COMMAND`` for each command, each in a fresh process; the processes
    run side by side (two cores; they write nothing), and each is waited for."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "deepgen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
             for args in commands]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def test_python_m_deepgen(tmp_path: Path) -> None:
    ok, bad = _python_m(["models"], ["train", "vea", "--data", "digits"], cwd=tmp_path)
    assert ok.returncode == 0 and "vae" in ok.stdout
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "deepgen: error: unknown model 'vea'" in bad.stderr
    assert not (tmp_path / "runs").exists()


def test_interrupt_after_a_checkpoint_keeps_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from deepgen.training import Trainer

    def interrupted(self: Trainer) -> None:
        self.save_checkpoint()
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--out", str(run), *TINY]) == 130
    assert (run / "model.safetensors").is_file()
    err = capsys.readouterr().err
    assert "is kept" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0


def _write_bad_data(root: Path) -> dict[str, Path]:
    """One broken input of each kind the issue lists, each in its own folder."""
    import gzip

    bad: dict[str, Path] = {}
    # MNIST with a corrupt header (wrong magic) and with a truncated image file.
    for name, payload in {
        "corrupt": (1234).to_bytes(4, "big") + bytes(12),
        "truncated": (2051).to_bytes(4, "big") + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100),
    }.items():
        folder = root / name / "mnist"
        folder.mkdir(parents=True)
        for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
            (folder / f).write_bytes(gzip.compress(payload))
        for f in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (folder / f).write_bytes(gzip.compress((2049).to_bytes(4, "big") + (0).to_bytes(4, "big")))
        bad[name] = root / name
    (root / "no-images").mkdir()
    (root / "no-images" / "notes.txt").write_text("not an image")
    bad["no-images"] = root / "no-images"
    (root / "text.csv").write_text("a,b\n1,2\n3,hello\n")
    bad["text-csv"] = root / "text.csv"
    (root / "nan.csv").write_text("a,b\n1,2\n3,nan\n")
    bad["nan-csv"] = root / "nan.csv"
    return bad


@pytest.mark.parametrize(
    ("case", "word"),
    [("corrupt", "magic"), ("truncated", "truncated"), ("no-images", "no images"), ("text-csv", "hello"), ("nan-csv", "NaN")],
)
def test_bad_data_files_exit_2_with_one_line(tmp_path: Path, no_data_env: Path, capsys: pytest.CaptureFixture[str], case: str, word: str) -> None:
    bad = _write_bad_data(tmp_path / "bad")
    target = bad[case]
    argv = ["train", "vae", "--data", "mnist", "--data-dir", str(target)] if case in ("corrupt", "truncated") else ["train", "vae", "--data", str(target)]
    run = tmp_path / "out"
    assert main([*argv, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepgen: error: ")
    assert word.lower() in err[0].lower(), err[0]
    assert not run.exists()
