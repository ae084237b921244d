"""Corrupt run folders: one line, exit 2, for every command.

One tiny run is trained once (a module fixture); copies of it are then broken one way
each, systematically: every entry of config.json (and of each config in it) dropped,
nulled and given a wrong type; every field of the trainer state and of the checkpoint's
manifest likewise; every tensor and JSON file of the checkpoint truncated, emptied,
removed, and with one bit flipped. Each copy is given to every command that reads a run
(``train --resume``, ``sample``, ``eval``, ``report``) through ``deepgen.cli.main`` in
this process. Each must succeed (exit 0) or exit 2 with one line on stderr, never a
traceback, and a failed command leaves the folder exactly as it was (nothing half written,
no output file). Corrupted weights and trainer state must be refused, never loaded.

The run folder is checked in both layouts: this version's (``checkpoints/step-N/`` with
checksums) and the one of earlier versions (top-level ``model.safetensors`` and
``trainer_state/``, no checksums: there the trainer state's own checks are what stands).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import to_old_layout

import deepgen.analysis
import deepgen.cli
import deepgen.report
from deepgen.cli import main
from deepgen.data import DataConfig, DataSpec
from deepgen.models import model_class
from deepgen.training import TrainConfig
from deepgen.training import checkpoint as ckpt

TRAIN = ["vae", "--data", "digits", "--set", "max_train=64", "--batch-size", "32", "--epochs", "2",
         "--set", "max_steps=1", "--set", "hidden=16", "--set", "latent_dim=2", "--set", "ema=0.9",
         "--set", "progress=false", "--set", "tensorboard=false", "--set", "log_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run (stopped by max_steps=1 mid-epoch: a resume has a step to take), and the
    same run in the layout of earlier versions."""
    root = tmp_path_factory.mktemp("mutations")
    run = root / "run"
    assert main(["train", *TRAIN, "--out", str(run)]) == 0
    old = root / "old"
    shutil.copytree(run, old, symlinks=True)
    to_old_layout(old)
    return {"new": run, "old": old}


# The command line's parser, built once for the module instead of once a command (4 ms each:
# argparse looks up a translation of every help text); parse_args leaves it as it was.
_PARSER = functools.cache(deepgen.cli._parser)


@pytest.fixture(autouse=True)
def _no_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pictures and curves come from weights and logs that these mutations leave alone;
    # drawing them for each of a thousand commands would only cost time.
    monkeypatch.setattr(deepgen.cli, "_pictures", lambda: [])
    monkeypatch.setattr(deepgen.analysis, "write_analysis", lambda *a, **k: [])
    monkeypatch.setattr(deepgen.report, "curves_png", lambda *a, **k: None)
    monkeypatch.setattr(deepgen.cli, "_parser", _PARSER)


# -- the mutations -------------------------------------------------------------------------------

MISSING = object()


def _wrong(value: Any) -> Any:
    """A value of another JSON type."""
    return 7 if isinstance(value, str) else "x"


def _json_mutations(file: str, sections: dict[str, list[str]]) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(layout, file, key path, how) for each key of each section: dropped, null, wrong type."""
    out = []
    for section, keys in sections.items():
        for key in keys:
            path = (key,) if section == "" else (section, key)
            for how in ("drop", "null", "wrong"):
                out.append((file, path, how))
    return out


CONFIG_SECTIONS = {
    "": ["deepgen_version", "model", "model_config", "data", "train", "spec", "data_meta"],
    "model_config": [n for n in model_class("vae").config_class.field_names()],
    "data": [n for n in DataConfig.field_names()],
    "train": [n for n in TrainConfig.field_names()],
    "spec": [n for n in DataSpec.field_names()],
    "data_meta": ["seed", "source", "test_fraction"],
}
STATE_SECTIONS = {
    "": ["step", "seconds", "optimizers", "loader", "rng_cpu", "osc_history", "examples"],
    "loader": ["epoch", "pos", "perm", "order_gen", "convert_gen"],
}
MANIFEST_SECTIONS = {"": ["format", "step", "deepgen_version", "files", "figure", "sha256"]}
FILE_HOWS = ("truncate", "empty", "remove", "flip", "flip-header")

CASES: list[tuple[str, str, tuple[str, ...], str]] = []
for layout in ("new", "old"):
    CASES += [(layout, *m) for m in _json_mutations(ckpt.CONFIG, CONFIG_SECTIONS) if layout == "new"]
    CASES += [(layout, *m) for m in _json_mutations(ckpt.STATE_JSON_FILE, STATE_SECTIONS)]
    files = [ckpt.WEIGHTS, ckpt.EMA_WEIGHTS, ckpt.STATE_TENSORS_FILE, ckpt.STATE_JSON_FILE]
    if layout == "new":
        CASES += [(layout, *m) for m in _json_mutations(ckpt.MANIFEST, MANIFEST_SECTIONS)]
        files += [ckpt.MANIFEST]
    CASES += [(layout, f, (), how) for f in files for how in FILE_HOWS]
CASES += [("new", ckpt.CONFIG, (), how) for how in ("truncate", "empty", "flip-header")]
# The configs no longer describe the weights (a hand edit): other sizes, another family.
CASES += [("new", ckpt.CONFIG, ("model_config", "latent_dim"), "set:3"), ("new", ckpt.CONFIG, ("model_config", "hidden"), "set:[24]"),
          ("new", ckpt.CONFIG, ("model",), 'set:"ae"'), ("new", ckpt.CONFIG, ("data", "max_train"), "set:0"),
          ("new", ckpt.CONFIG, ("spec", "shape"), "set:[1,4,4]"), ("new", ckpt.CONFIG, ("data", "name"), 'set:"moons"'),
          ("new", ckpt.CONFIG, (), "set:[]"), ("new", ckpt.MANIFEST, ("step",), "set:5"),
          ("old", ckpt.STATE_JSON_FILE, ("step",), "set:5"), ("old", ckpt.STATE_JSON_FILE, (), "set:{}")]


def _id(case: tuple[str, str, tuple[str, ...], str]) -> str:
    layout, file, path, how = case
    return f"{layout}:{file}:{'.'.join(path) or '-'}:{how}"


def _target(run: Path, layout: str, file: str) -> Path:
    if file == ckpt.CONFIG or layout == "old":
        return run / file
    return ckpt.current_checkpoint(run).path / file


def _mutate(run: Path, layout: str, file: str, path: tuple[str, ...], how: str) -> None:
    target = _target(run, layout, file)
    if not path and not how.startswith("set:"):  # the file itself
        data = target.read_bytes()
        if how == "truncate":
            target.write_bytes(data[: len(data) // 2])
        elif how == "empty":
            target.write_bytes(b"")
        elif how == "remove":
            target.unlink()
        elif how == "flip":  # one bit near the end: a weight's value, or JSON's last bracket
            i = len(data) - 3
            target.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :])
        elif how == "flip-header":  # inside safetensors' header / early in the JSON
            target.write_bytes(data[:9] + bytes([data[9] ^ 0x41]) + data[10:])
        return
    doc = json.loads(target.read_text())
    if how.startswith("set:") and not path:
        doc = json.loads(how[4:])
    else:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if key not in parent:
            pytest.skip(f"{'.'.join(path)} is not in this run's {file}")
        if how == "drop":
            del parent[key]
        elif how == "null":
            parent[key] = None
        elif how == "wrong":
            parent[key] = _wrong(parent[key])
        else:
            parent[key] = json.loads(how[4:])
    target.write_text(json.dumps(doc))


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a symbolic link's target, a file's sha256, or a folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _commands(run: Path, out: Path) -> dict[str, tuple[list[str], Path | None]]:
    return {
        "sample": (["sample", str(run), "--n", "2", "--out", str(out / "s.npy")], out / "s.npy"),
        "eval": (["eval", str(run), "--metrics", "recon", "--limit", "8", "--batch-size", "8", "--device", "cpu"], None),
        "report": (["report", str(run), "--out", str(out / "r.html")], out / "r.html"),
        "resume": (["train", "--resume", str(run), "--set", "max_steps=2"], None),  # last: it changes the folder
    }


# What each command reads of a checkpoint: corrupting it must be refused, never loaded.
READS = {
    "resume": set(ckpt.CHECKPOINT_FILES) | {ckpt.MANIFEST},
    "sample": {ckpt.EMA_WEIGHTS, ckpt.MANIFEST},
    "eval": {ckpt.EMA_WEIGHTS, ckpt.MANIFEST},
    "report": set(),
}


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_command_on_a_corrupt_run_exits_0_or_2_with_one_line(case, trained, tmp_path, capsys):
    layout, file, path, how = case
    run = tmp_path / "run"
    shutil.copytree(trained[layout], run, symlinks=True)
    _mutate(run, layout, file, path, how)
    out = tmp_path / "out"
    out.mkdir()
    for name, (argv, product) in _commands(run, out).items():
        before = _snapshot(run)
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        where = f"{name} on {_id(case)}"
        assert "Traceback" not in captured.err + captured.out, f"{where}:\n{captured.err}"
        assert code in (0, 2), f"{where}: exit {code}\n{captured.err}"
        if code == 2:
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("deepgen: error: "), f"{where}: {lines}"
            assert _snapshot(run) == before, f"{where}: the failed command changed the run folder"
            assert product is None or not product.exists(), f"{where}: the failed command wrote {product}"
        # A corrupted file of the checkpoint (this version's: with checksums) is refused by
        # every command that reads it.
        corrupt = layout == "new" and not path and how in FILE_HOWS and file in READS[name]
        if corrupt:
            assert code == 2, f"{where}: a corrupted {file} was loaded"


def test_the_messages_say_what_is_wrong(trained, tmp_path, capsys):
    """A few of the cases above, with the words each message must hold."""
    cases = [
        ("new", ckpt.CONFIG, ("model_config",), "null", "sample", "'model_config' = null, which is not an object"),
        ("new", ckpt.CONFIG, ("model_config",), "null", "report", "'model_config' = null"),
        ("new", ckpt.CONFIG, ("model_config", "latent_dim"), "wrong", "resume", "latent_dim must be an integer"),
        ("new", ckpt.CONFIG, ("model_config", "latent_dim"), "set:3", "resume", "do not fit the model config"),
        ("new", ckpt.CONFIG, ("data", "max_train"), "set:0", "resume", "trained on 64 training examples"),
        ("old", ckpt.STATE_JSON_FILE, (), "set:{}", "resume", "'step' is missing"),
        ("old", ckpt.STATE_JSON_FILE, ("loader", "pos"), "wrong", "resume", "data position"),
        ("new", ckpt.EMA_WEIGHTS, (), "flip", "sample", "sha256"),
        ("new", ckpt.STATE_JSON_FILE, (), "remove", "resume", "trainer_state/ is missing state.json"),
        ("new", ckpt.MANIFEST, (), "remove", "eval", "manifest.json is missing"),
    ]
    for layout, file, path, how, command, words in cases:
        run = tmp_path / f"{command}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained[layout], run, symlinks=True)
        _mutate(run, layout, file, path, how)
        argv, _ = _commands(run, tmp_path)[command]
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err, (layout, file, path, how, command, err)


# -- Ctrl-C during eval keeps what was finished ------------------------------------------------


def test_an_interrupted_eval_keeps_and_prints_the_finished_metrics(trained, tmp_path, monkeypatch, capsys):
    import deepgen.metrics as metrics

    run = tmp_path / "run"
    shutil.copytree(trained["new"], run, symlinks=True)
    real = metrics.evaluate

    class EvaluationInterrupted(KeyboardInterrupt):  # as metrics.evaluate raises it
        def __init__(self, results: dict[str, Any]) -> None:
            super().__init__()
            self.results = results

    def evaluate(model, dataset, names, **kw):
        if names == ["elbo"]:
            partial = copy.deepcopy(real(model, dataset, names, **kw))  # finished before Ctrl-C
            raise EvaluationInterrupted(partial)
        if names == ["nll"]:
            raise EvaluationInterrupted({"split": kw.get("split"), "n": 8})  # nothing finished
        return real(model, dataset, names, **kw)

    monkeypatch.setattr(metrics, "evaluate", evaluate)
    base = ["eval", str(run), "--limit", "8", "--batch-size", "8", "--device", "cpu", "--set", "iwae_k=2"]
    capsys.readouterr()
    assert main([*base, "--metrics", "recon,elbo,nll"]) == 130
    captured = capsys.readouterr()
    assert "recon_mse" in captured.out and "elbo" in captured.out  # the table of what finished
    assert "interrupted during elbo" in captured.err and "recon, elbo" in captured.err
    saved = json.loads((run / ckpt.EVAL).read_text())
    assert set(saved) == {"recon", "elbo"} and saved["recon"]["test"]["n"] == 8
    # Interrupted before anything finished: nothing written, still 130.
    (run / ckpt.EVAL).unlink()
    assert main([*base, "--metrics", "nll"]) == 130
    assert "no metric had finished" in capsys.readouterr().err
    assert not (run / ckpt.EVAL).exists()
    # A plain KeyboardInterrupt (before the evaluator's change): the same, without partial results.
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main([*base, "--metrics", "recon"]) == 130
    assert "interrupted during recon" in capsys.readouterr().err
