"""The benchmark scripts' own logic (argument checks, settings routing, the table), on
tiny settings. Their figures mean nothing here: timings and quality are measured on the
GPU and recorded in benchmarks/RESULTS.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mc() -> ModuleType:
    return _load("mode_collapse")


def test_settings_route_to_model_and_trainer(mc: ModuleType) -> None:
    cfg, train = mc._configs("ring8", "deepgen", {"minibatch_std": "true", "schedule": "cosine", "g_hidden": "64,32"})
    assert cfg.minibatch_std is True and tuple(cfg.g_hidden) == (64, 32)
    assert cfg.noise_dim == 32  # the registered gan's default, not PacGAN's 2
    assert train == {"schedule": "cosine"}
    paper, _ = mc._configs("grid25", "paper", {})
    assert paper.noise_dim == 2 and tuple(paper.g_hidden) == (400, 400, 400, 400) and paper.g_norm == "batch"


@pytest.mark.parametrize(
    "argv",
    [
        ["--settings", "no_such_key=1"],
        ["--remedy", "pack=zero"],
        ["--datasets", "ring9"],
        ["--seeds", "0"],
        ["--kinds", "vanilla"],
    ],
)
def test_bad_arguments_exit_2(mc: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        mc.parse_args(["--datasets", "ring8", *argv] if argv[0] != "--datasets" else argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_tiny_run_prints_both_rows(mc: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "mc.json"
    record = mc.main(
        ["--device", "cpu", "--datasets", "ring8", "--seeds", "1", "--steps", "5", "--arch", "deepgen",
         "--settings", "lr=1e-3", "--remedy", "minibatch_std=true", "--out", str(out)]
    )
    kinds = [r["kind"] for r in record["runs"]]
    assert sorted(kinds) == ["baseline", "data", "remedy"]
    for r in record["runs"]:
        assert 0 <= r["modes"] <= 8 and 0 <= r["hq_percent"] <= 100
        if r["kind"] != "data":
            assert r["steps"] == 5 and r["settings"]["lr"] == 1e-3
    remedy = next(r for r in record["runs"] if r["kind"] == "remedy")
    assert remedy["settings"]["minibatch_std"] is True
    assert "gan's default nets, lr=1e-3 + minibatch_std=true" in record["markdown"]
    assert "smoke settings" in record["markdown"]
    assert out.is_file()


def test_kinds_trains_only_the_runs_asked_for(mc: ModuleType) -> None:
    record = mc.main(["--device", "cpu", "--datasets", "ring8", "--seeds", "1", "--steps", "3", "--arch", "deepgen", "--kinds", "remedy", "--no-data-row"])
    assert [r["kind"] for r in record["runs"]] == ["remedy"]
    assert "+ pack=4" in record["markdown"] and "gan's default nets |" not in record["markdown"]


def test_runs_dir_resumes_to_more_steps(mc: ModuleType, tmp_path: Path) -> None:
    """A second call with --runs-dir continues each run from its checkpoint: the split run's
    final weights equal those of one uninterrupted run of the same length (CPU)."""
    import torch
    from safetensors.torch import load_file

    common = ["--device", "cpu", "--datasets", "ring8", "--seeds", "1", "--arch", "deepgen", "--no-data-row", "--remedy", "pack=2"]
    split, whole = tmp_path / "split", tmp_path / "whole"
    mc.main([*common, "--steps", "4", "--runs-dir", str(split)])
    record = mc.main([*common, "--steps", "9", "--runs-dir", str(split)])
    assert sorted(r["steps"] for r in record["runs"]) == [9, 9]
    mc.main([*common, "--steps", "9", "--runs-dir", str(whole)])
    for kind in ("baseline", "remedy"):
        run = f"ring8-{kind}-seed0"
        assert (split / run / "samples.png").is_file()
        a, b = load_file(str(split / run / "model.safetensors")), load_file(str(whole / run / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_per_process_trains_runs_together(mc: ModuleType, tmp_path: Path) -> None:
    """Four runs trained together in one process: each trains its own steps, the group is
    reproducible, and the runs stay distinct (no run's weights are another's)."""
    import torch
    from safetensors.torch import load_file

    args = ["--device", "cpu", "--datasets", "ring8", "--seeds", "2", "--steps", "4", "--arch", "deepgen", "--no-data-row"]
    together = mc.main([*args, "--per-process", "4", "--runs-dir", str(tmp_path / "a")])
    again = mc.main([*args, "--per-process", "4", "--runs-dir", str(tmp_path / "b")])
    alone = mc.main(args)
    key = lambda r: (r["kind"], r["seed"], r["steps"])  # noqa: E731
    assert sorted(map(key, together["runs"])) == sorted(map(key, alone["runs"]))
    assert "1 process(es) x 4 runs trained together at once" in together["markdown"]
    assert sorted(map(key, again["runs"])) == sorted(map(key, together["runs"]))
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 4
    weights = {}
    for name in names:
        state = json.loads((tmp_path / "a" / name / "trainer_state" / "state.json").read_text())
        assert state["step"] == 4, (name, state["step"])
        a = load_file(str(tmp_path / "a" / name / "model.safetensors"))
        b = load_file(str(tmp_path / "b" / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} is not reproducible"
        weights[name] = a
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert any(not torch.equal(weights[x][k], weights[y][k]) for k in weights[x] if k in weights[y]), (x, y)
    with pytest.raises(SystemExit):
        mc.parse_args(["--per-process", "0"])


def test_stream_speed_runs_and_reuses_its_folder(real_data_dir: Path, tmp_path: Path) -> None:
    ss = _load("stream_speed")
    args = ["--data-dir", str(real_data_dir), "--device", "cpu", "--folder", str(tmp_path), "--images", "80", "--size", "12",
            "--workers", "0", "--batches", "2", "--batch", "16", "--train-steps", "2", "--no-peer", "--out", str(tmp_path / "s.json")]
    rows = ss.main(args)
    assert [r["loader"] for r in rows if "loader" in r] == ["deepgen resident (on the device)", "deepgen streaming"]
    assert all(r["images_per_s"] > 0 for r in rows if "loader" in r) and len([r for r in rows if "training" in r]) == 2
    pngs = sorted((tmp_path / "png").rglob("*.png"))
    assert len(pngs) == 80 and {p.parent.name for p in pngs} <= {str(d) for d in range(10)}
    stamp = pngs[0].stat().st_mtime_ns
    ss.main(args)  # the folder is written once
    assert pngs[0].stat().st_mtime_ns == stamp and json.loads((tmp_path / "s.json").read_text())["rows"]
