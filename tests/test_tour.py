"""The README tour runs: every CPU line of its ``bash`` block, in-process, at the quick-try
sizes the README names (training ``--set max_train=2000 --epochs 2``, ``--epochs 4`` on
resume, ``--set max_steps=100`` for the GANs, ``eval``/``score --limit 200``), and every example that
``deepgen models NAME`` prints names settings the model, trainer and data accept.

Each command's wall time is printed (``pytest -s``), never asserted."""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import pytest

from deepgen import cli
from deepgen.cli import main
from deepgen.models import model_class, model_names

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK_TRAIN = ["--set", "max_train=2000", "--epochs", "2"]
QUICK_GAN = ["--set", "max_steps=100"]
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
GANS = {"gan", "dcgan", "wgan", "wgan-gp"}


def tour_commands() -> list[list[str]]:
    """The CPU lines of the README tour (before its "Slow on a CPU, or GPU" comment), each
    ``a && b`` split in two, comments dropped, ``deepgen`` removed."""
    text = README.read_text()
    block = re.search(r"## A tour.*?```bash\n(.*?)```", text, re.S)
    assert block, "README has no tour block"
    body = block.group(1).split("# Slow on a CPU")[0].replace("\\\n", " ")
    commands = []
    for line in body.splitlines():
        for part in " ".join(shlex.split(line, comments=True)).split(" && "):
            words = shlex.split(part)
            if words:
                assert words[0] == "deepgen", line
                commands.append(words[1:])
    return commands


def quick(argv: list[str]) -> list[str]:
    """A tour command at the README's quick-try sizes."""
    argv = list(argv)
    if argv[0] == "train":
        if "--resume" in argv:
            i = argv.index("--epochs")
            argv[i + 1] = str(int(QUICK_TRAIN[-1]) * 2)
            return argv + ["--set", "progress=false"]
        if argv[1] in GANS:
            return argv + QUICK_GAN + QUIET
        if "--epochs" in argv:
            i = argv.index("--epochs")
            del argv[i : i + 2]
        return argv + QUICK_TRAIN + QUIET
    if argv[0] in ("eval", "score"):
        if "--limit" in argv:
            i = argv.index("--limit")
            del argv[i : i + 2]
        return argv + ["--limit", "200"] + (["--quiet", "--device", "cpu"] if argv[0] == "eval" else [])
    return argv


@pytest.mark.skipif(not os.environ.get("DEEPGEN_DATA"), reason="the tour trains on MNIST: set DEEPGEN_DATA")
def test_readme_tour_cpu_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    commands = tour_commands()
    assert len(commands) >= 10 and any(c[0] == "encode" for c in commands) and any(c[0] == "score" for c in commands)
    times = []
    for argv in commands:
        run = quick(argv)
        start = time.perf_counter()
        code = main(run)
        times.append((shlex.join(["deepgen", *argv]), time.perf_counter() - start))
        out = capsys.readouterr()
        assert code == 0, f"{shlex.join(run)} -> {code}: {out.err}"
    with capsys.disabled():
        print("\ncommand | seconds on this machine (quick-try sizes)")
        for line, s in times:
            print(f"{line} | {s:.1f}")


@pytest.mark.parametrize("name", model_names())
def test_models_example_is_valid(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The example `deepgen models NAME` prints: its settings are accepted and its data loads
    (tests/test_cli.py trains models end to end; the example's time is in README's table)."""
    monkeypatch.chdir(tmp_path)
    assert main(["models", name]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    words = shlex.split(line)
    assert words[:3] == ["deepgen", "train", name], line
    args = cli._parser().parse_args(words[1:])
    plan = cli._plan_train(
        name, args.data, args.data_dir, cli._overrides(args.set), cli._train_shortcuts(args),
        Path(args.out) if args.out else None, args.overwrite,
    )
    assert plan.model_name == name and not plan.out.exists()
    assert model_class(name).config_class.field_names()


def test_unknown_setting_suggests_the_models_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "gan", "--data", "ring8", "--set", "latent_dim=8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'noise_dim'" in err and "\n" not in err.strip()
    assert not (tmp_path / "r").exists()
