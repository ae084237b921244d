"""The benchmark scripts' own logic (argument checks, settings routing, the table), on
tiny settings. Their figures mean nothing here: timings and quality are measured on the
GPU and recorded in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    return load_script("benchmarks", name, "bench")


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
    ss.main([*args, "--train-steps", "0"])  # the folder is written once (the training rows were the first call's)
    assert pngs[0].stat().st_mtime_ns == stamp and json.loads((tmp_path / "s.json").read_text())["rows"]


def test_ar_nll_selects_on_held_out_training_images(real_data_dir: Path, tmp_path: Path) -> None:
    """The NLL benchmark validates on the last training images (never the test set), keeps
    the best epoch's weights, sizes its schedule from the probe, and writes its picture."""
    nll = _load("ar_mnist_nll")
    out = tmp_path / "row.json"
    args = ["--model", "made", "--tiny", "--time-budget", "1", "--probe-seconds", "0.5", "--limit-test", "20", "--max-train", "300",
            "--validation", "100", "--data-dir", str(real_data_dir), "--device", "cpu", "--samples", str(tmp_path / "s.png"), "--out", str(out)]
    assert nll.main(args) == 0
    row = json.loads(out.read_text())
    assert row["test_images"] == 20 and row["validation_images"] == 100 and row["probe"]["steps"] > 0
    assert row["best_epoch"] is not None and 1 <= row["best_epoch"] <= row["epochs"] <= row["schedule_epochs"]
    assert row["train"]["epochs"] == row["schedule_epochs"] and (tmp_path / "s.png").stat().st_size > 0


def test_ar_sampling_and_training_speed_scripts_run(real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sampling = _load("ar_sampling")
    assert sampling.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "a.json")]) == 0
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert {r.get("sampler") for r in rows} >= {"cached", "naive"} and all(r.get("images_per_s", 1) > 0 for r in rows)
    speed = _load("ar_train_speed")
    assert speed.main(["--tiny", "--device", "cpu", "--data-dir", str(real_data_dir), "--steps", "2", "--warmup", "1", "--out", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["made", "pixelcnn", "transformer"] and all(r["plain"] > 0 and r["deepgen_eager"] > 0 for r in rows)


def test_ar_nll_run_dir_resumes_on_its_schedule(real_data_dir: Path, tmp_path: Path) -> None:
    """A run longer than one device call: the first call sizes the schedule for the total
    budget and stops at its own; --resume continues on the same schedule, and both calls
    test the best checkpoint chosen on the held-out images."""
    nll = _load("ar_mnist_nll")
    run, out = tmp_path / "run", tmp_path / "row.json"
    common = ["--model", "pixelcnn", "--tiny", "--limit-test", "20", "--max-train", "64", "--validation", "100", "--batch-size", "16",
              "--data-dir", str(real_data_dir), "--device", "cpu", "--run-dir", str(run), "--out", str(out)]
    assert nll.main([*common, "--epochs", "4", "--time-budget", "0.01"]) == 0
    first = json.loads(out.read_text())
    assert first["epochs"] < 4 and first["schedule_epochs"] == 4 and first["train"]["keep_best"] == "val_loss"
    assert nll.main([*common, "--resume", "--time-budget", "600"]) == 0
    second = json.loads(out.read_text())
    assert second["resumed"] and second["epochs"] == 4 and second["steps"] == 4 * (64 // 16) and second["best_val_nll"] is not None
    assert 1 <= second["best_epoch"] <= 4 and second["validation_images"] == 100
    # max_seconds counts the run's whole training time: the resumed call adds its own budget to it.
    assert second["train"]["max_seconds"] == pytest.approx(first["train_seconds"] + 600, abs=0.5)


def test_saved_runs_resume_on_another_machine(real_data_dir: Path, tmp_path: Path) -> None:
    """save_runs / restore_runs of benchmarks/jobs.sh (runs longer than a session): the
    archive holds each run's newest checkpoint and the logs named, in parts of at most
    15 MiB; unpacked in another checkout it resumes the run on its schedule, and the logs
    stay in the archive, not in the checkout."""
    import subprocess

    nll = _load("ar_mnist_nll")
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    out.mkdir()
    (out / "x.log").write_text("log")
    common = ["--model", "pixelcnn", "--tiny", "--limit-test", "20", "--max-train", "64", "--validation", "100", "--batch-size", "16",
              "--data-dir", str(real_data_dir), "--device", "cpu", "--out", str(tmp_path / "row.json")]
    assert nll.main([*common, "--run-dir", str(first / "runs" / "r"), "--epochs", "4", "--time-budget", "0.01"]) == 0
    (newest,) = (first / "runs" / "r" / "checkpoints").iterdir()
    shutil.copytree(newest, newest.with_name("step-0000000"))  # an older (best) checkpoint kept beside the newest
    steps = sorted(p.name for p in newest.parent.iterdir())
    jobs = ROOT / "benchmarks" / "jobs.sh"

    def bash(cwd: Path, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"set -u; source {jobs}; {script}"], cwd=cwd, env={"OUT": str(out), "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, check=True)

    bash(first, f"save_runs {out}/x.log {out}/absent.png")
    parts = sorted(out.glob("runs.tgz.part-*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts) and not (out / "x.log").exists()
    (second / ".runs").mkdir(parents=True)
    for p in parts:
        (second / ".runs" / p.name).write_bytes(p.read_bytes())
    assert "restored from .runs/: r" in bash(second, "restore_runs").stdout
    assert sorted(p.name for p in (second / "runs" / "r" / "checkpoints").iterdir()) == steps[-1:]
    assert not (second / "x.log").exists()
    listing = subprocess.run(f"cat {second}/.runs/runs.tgz.part-* | tar -tz", shell=True, capture_output=True, text=True, check=True).stdout
    assert "x.log" in listing.split()
    assert nll.main([*common, "--run-dir", str(second / "runs" / "r"), "--resume", "--time-budget", "600"]) == 0
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["resumed"] and row["epochs"] == 4 and row["steps"] == 4 * (64 // 16)
    assert bash(tmp_path, "restore_runs").returncode == 0  # nothing carried: nothing to do


def test_flow_tables_compares_flows_with_a_mixture_on_held_out_data(tmp_path: Path) -> None:
    """The tabular benchmark: one GaussianMixture row and one row per flow for each data set,
    all on the same standardised splits; selection on the validation split."""
    ft = _load("flow_tables")
    out = tmp_path / "t.json"
    assert ft.main(["--tiny", "--datasets", "wine,moons", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["dataset"], r["model"]) for r in rows] == [
        (d, m) for d in ("wine", "moons") for m in ("gaussian-mixture", "maf", "nsf", "realnvp")
    ]
    assert all(math.isfinite(r["test_ll"]) for r in rows) and rows[0]["components"] >= 1
    wine = ft.table("wine", 0)
    assert len(wine.val) == 36 and len(wine.test) == 36 and abs(float(wine.train.x.mean())) < 1e-5  # standardised on train
    # --grid: every candidate's validation figure is kept, the best on validation is tested.
    assert ft.main(["--tiny", "--grid", "--datasets", "wine", "--models", "nsf", "--threads", "1", "--out", str(out)]) == 0
    nsf = json.loads(out.read_text())["rows"][1]
    assert len(nsf["grid"]) == 2 and nsf["val_ll"] == max(g["val_ll"] for g in nsf["grid"]) and math.isfinite(nsf["test_ll"])


def test_nll_script_scores_a_flow_on_8bit_mnist_with_its_validation_curve(real_data_dir: Path, tmp_path: Path) -> None:
    """The flows' default data is 8-bit MNIST (dequantized); the row states it, reports
    bits/dim, and carries one [epoch, loss, val_loss] entry per epoch."""
    nll = _load("ar_mnist_nll")
    out = tmp_path / "g.json"
    assert nll.main(["--model", "glow", "--tiny", "--limit-test", "20", "--max-train", "64", "--validation", "32", "--batch-size", "16",
                     "--epochs", "2", "--data-dir", str(real_data_dir), "--device", "cpu", "--samples", str(tmp_path / "g.png"), "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["dataset"] == "mnist" and row["binarization"] is None and "dequantized" in row["note"]
    assert math.isfinite(row["nll_bpd"]) and row["nll_bpd"] > 0 and "1.05" in row["published"]
    assert [e[0] for e in row["val_curve"]] == [1, 2] and all(math.isfinite(e[2]) for e in row["val_curve"])
    assert (tmp_path / "g.png").stat().st_size > 0


def test_flow_speed_builds_normflows_layer_for_layer(real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer side of the flow speed benchmark: normflows' Glow and RealNVP in deepgen's
    layouts (about the same parameter count, a finite density, samples of MNIST's shape),
    and the script's rows on tiny settings."""
    nf = pytest.importorskip("normflows")  # a [dev] dependency: present in CI
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    fs = _load("flow_speed")
    import deepgen

    ds = deepgen.load_dataset("mnist", data_dir=str(real_data_dir), max_train=64)
    x = (torch.rand(4, 1, 28, 28) * 255).round() / 256 + torch.rand(4, 1, 28, 28) / 256
    for name, settings in (("glow", {"levels": 2, "steps": 2, "channels": 16}), ("realnvp", {"scales": 2, "couplings": 2, "channels": 16})):
        ours, peer = deepgen.create_model(name, ds, **settings), fs.build_peer(nf, name, settings)
        n_ours, n_peer = (sum(p.numel() for p in m.parameters()) for m in (ours, peer))
        assert abs(n_ours - n_peer) / n_ours < 0.15, (name, n_ours, n_peer)
        assert torch.isfinite(peer.log_prob(x, None)).all()
        with torch.no_grad():
            assert peer.sample(3)[0].shape == (3, 1, 28, 28)
    out = tmp_path / "s.json"
    assert fs.main(["--tiny", "--device", "cpu", "--data-dir", str(real_data_dir), "--steps", "2", "--warmup", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["glow", "realnvp"]
    assert all(r["normflows_train"] > 0 and r["deepgen_eager"] > 0 and r["deepgen_sample"] > 0 and r["normflows_sample"] > 0 for r in rows)


def test_diffusion_speed_names_the_operators_behind_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """kernel_sources (GPU profiles only, so never run by the CPU smoke test): each kernel's
    time is put on the chain of operators that launched it, largest first, as shares."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ds_speed = _load("diffusion_speed")
    from types import SimpleNamespace as E

    conv = E(name="aten::cudnn_convolution", cpu_parent=None, kernels=[], input_shapes=[[8, 64, 32, 32]])
    contig = E(name="aten::contiguous", cpu_parent=conv, kernels=[])
    copy = E(name="aten::copy_", cpu_parent=contig, kernels=[E(name="direct_copy", duration=30.0)], input_shapes=[[8, 64, 32, 32], [8, 64, 32, 32]])
    other = E(name="aten::clone", cpu_parent=None, kernels=[E(name="direct_copy", duration=10.0), E(name="gemm", duration=60.0)], input_shapes=[])
    out = ds_speed.kernel_sources([conv, contig, copy, other], ["direct_copy"], total=100.0)
    chains = out["direct_copy"]
    assert [c["share"] for c in chains] == [0.3, 0.1]
    assert chains[0]["ops"].startswith("aten::copy_ < aten::contiguous < aten::cudnn_convolution [[8, 64, 32, 32]")
    assert chains[1]["ops"].startswith("aten::clone []") and "gemm" not in out


def test_diffusion_speed_counts_kernels_not_annotations(monkeypatch: pytest.MonkeyPatch) -> None:
    """device_kernels: a GPU profile's time is its kernels' own; the CPU rows of operators
    and the user annotations of compiled graphs (device type CUDA too, spanning the kernels
    they launch) are not counted again."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ds_speed = _load("diffusion_speed")
    from types import SimpleNamespace as E

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    rows = [E(key="gemm", device_type=cuda, self_device_time_total=6.0, self_cpu_time_total=0.0, is_user_annotation=False),
            E(key="direct_copy", device_type=cuda, self_device_time_total=2.0, self_cpu_time_total=0.0, is_user_annotation=False),
            E(key="## Call CompiledFxGraph abc ##", device_type=cuda, self_device_time_total=8.0, self_cpu_time_total=0.0),  # older torch: no flag
            E(key="my_range", device_type=cuda, self_device_time_total=8.0, self_cpu_time_total=0.0, is_user_annotation=True),
            E(key="aten::mm", device_type=cpu, self_device_time_total=6.0, self_cpu_time_total=3.0, is_user_annotation=False),
            E(key="idle", device_type=cuda, self_device_time_total=0.0, self_cpu_time_total=0.0, is_user_annotation=False)]
    assert ds_speed.device_kernels(rows, gpu=True) == [("gemm", 6.0), ("direct_copy", 2.0)]
    assert ds_speed.device_kernels(rows, gpu=False) == [("aten::mm", 3.0)]


def test_diffusion_speed_sets_inductor_options_and_refuses_unknown_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """--inductor key=value: torch._inductor.config options as Python literals (a bare word
    as a string), returned as set; an unknown option or a missing '=' stops the call."""
    import torch._inductor.config as cfg

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ds_speed = _load("diffusion_speed")
    monkeypatch.setattr(cfg, "layout_optimization", cfg.layout_optimization)  # restored after the test
    monkeypatch.setattr(cfg, "max_autotune", cfg.max_autotune)
    flip = not cfg.layout_optimization
    assert ds_speed.set_inductor([f"layout_optimization={flip}", "max_autotune=1"]) == {"layout_optimization": flip, "max_autotune": 1}
    assert cfg.layout_optimization is flip and cfg.max_autotune == 1
    with pytest.raises(SystemExit, match="no option 'no_such_option'"):
        ds_speed.set_inductor(["no_such_option=1"])
    with pytest.raises(SystemExit, match="key=value"):
        ds_speed.set_inductor(["layout_optimization"])


def test_diffusion_speed_matches_diffusers_network_and_runs(real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer network of the diffusion speed benchmark has deepgen's parameter count
    exactly (the full 6.5M configuration and the tiny one), and the script's rows come out."""
    pytest.importorskip("diffusers")  # a [dev] dependency: present in CI
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ds_speed = _load("diffusion_speed")
    import deepgen

    spec = deepgen.DataSpec((1, 32, 32), "continuous", num_levels=256)
    full = deepgen.create_model("ddpm", spec, **ds_speed.SETTINGS)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in ds_speed.diffusers_unet(False).parameters()) == 6_469_889
    out = tmp_path / "d.json"
    assert ds_speed.main(["--tiny", "--device", "cpu", "--data-dir", str(real_data_dir), "--batches", "4", "--steps", "2", "--warmup", "1",
                          "--sample-n", "8", "--sample-batch", "4", "--sample-steps", "3", "--profile", "--sample-settings", "channels=4",
                          "--out", str(out)]) == 0
    record, row = json.loads(out.read_text())["rows"]
    assert record["parameters"] == record["diffusers_parameters"] and record["flops_per_sample"] > 0
    assert row["diffusers_fp32"] > 0 and row["deepgen_eager"] > 0 and record["sampling"]["seconds_eager"] > 0
    cat = ds_speed.kernel_category
    assert cat("triton_poi_fused_convolution_silu_3") == cat("triton_red_fused_native_group_norm_0") == "compiled fused (norms, activations, adds)"
    assert cat("triton_tem_fused_mm_4") == "matmul" and cat("triton_tem_fused_convolution_1") == "convolution"
    assert cat("sm90_xmma_fprop_implicit_gemm_bf16") == "convolution" and cat("pytorch_flash::flash_fwd_kernel") == "attention"
    # --sample-settings: another network is sampled; --profile: the time by category sums to all of it.
    assert record["sampling"]["settings"] == ["channels=4"] and record["sampling"]["parameters"] < record["parameters"]
    for name in ("train_4", "sample_4"):
        prof = record["profile"][name]
        assert prof["ms_per_step"] > 0 and sum(prof["by_category"].values()) == pytest.approx(1.0) and prof["top"], name
    # A profile alone: no throughput rows, no sampling, the training step at --profile-batches.
    assert ds_speed.main(["--tiny", "--device", "cpu", "--data-dir", str(real_data_dir), "--batches", "", "--sample-modes", "", "--warmup", "1",
                          "--profile", "--profile-batches", "2", "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())["rows"]
    assert list(record["profile"]) == ["train_2"] and not any(k.startswith("seconds_") for k in record["sampling"])


def test_diffusion_quality_scores_each_sampler_setting_separately(real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quality-against-steps benchmark on tiny settings, with stand-in features and
    classifier (the real ones train for a minute): one FID per sampler configuration, each
    from its own samples (different settings, different figures), guidance rows with the
    classifier's accuracy, the bound, and a resumed call that trains on."""
    from test_quality_and_bench import ProjectionFeatures

    from deepgen.metrics import quality

    class Classifier:
        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(len(x), -1)[:, :10]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(quality, "feature_net", lambda ds, ctx: ProjectionFeatures(ds.spec.dim))
    quality._SAMPLE_MEMO.clear()
    dq = _load("diffusion_quality")
    monkeypatch.setattr(dq, "digit_classifier", lambda ds, device: Classifier())
    run, out = tmp_path / "run", tmp_path / "q.json"
    common = ["--tiny", "--max-train", "64", "--samples", "32", "--data-dir", str(real_data_dir), "--device", "cpu", "--run-dir", str(run),
              "--out", str(out)]
    assert dq.main([*common, "--time-budget", "1", "--settings", "conditional=true", "--grid", "ddim:5:0,dpm-solver++:3:0,ddim:50:0",
                    "--guidance", "0,2", "--guidance-config", "ddim:4:0", "--bound-stride", "5", "--bound-limit", "8",
                    "--pictures", str(tmp_path / "pics")]) == 0
    rec = json.loads(out.read_text())
    assert [(r["sampler"], r["steps"]) for r in rec["fid"]] == [("ddim", 5), ("dpm-solver++", 3)]  # 50 > timesteps: left out
    assert rec["fid"][0]["fid"] != rec["fid"][1]["fid"] and all(math.isfinite(r["fid"]) for r in rec["fid"])
    assert [g["guidance"] for g in rec["guidance"]] == [0.0, 2.0] and all(0 <= g["classifier_accuracy"] <= 1 for g in rec["guidance"])
    assert math.isfinite(rec["bound"]["nll_bpd"]) and "every 5-th" in rec["bound"]["note"]
    # The bound's standard error in bits/dim is its nats' over D ln 2 (the bin offset is a constant).
    assert rec["bound"]["nll_bpd_sem"] == pytest.approx(rec["bound"]["nll_sem"] / (784 * math.log(2))) and rec["bound"]["nll_sem"] > 0
    assert len(list((tmp_path / "pics").glob("mnist_*.png"))) == 4
    first = rec["steps"]
    # The resumed call scores without --pictures (64 more samples a configuration): the first drew and counted them.
    assert dq.main([*common, "--resume", "--time-budget", "1", "--grid", "ddim:5:0"]) == 0
    again = json.loads(out.read_text())
    assert again["resumed"] and again["steps"] > first


def test_apps_benchmarks_run_their_rows(real_data_dir: Path, tmp_path: Path) -> None:
    """The embedding and anomaly benchmarks on tiny settings: one row per (dimension,
    embedding) with probe and 5-NN accuracies in [0, 1] (PCA beside deepgen), and one AUROC
    per (normal class, detector) plus the tables' rows (IsolationForest, OneClassSVM)."""
    emb = _load("apps_embedding")
    out = tmp_path / "e.json"
    assert emb.main(["--tiny", "--datasets", "mnist", "--dims", "2", "--models", "ae-mlp", "--few", "5", "--data-dir", str(real_data_dir),
                     "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["embedding"] for r in rows] == ["pca", "ae-mlp"] and all(0 <= r["probe"] <= 1 and 0 <= r["knn_few"] <= 1 for r in rows)
    an = _load("apps_anomaly")
    out = tmp_path / "a.json"
    assert an.main(["--tiny", "--datasets", "mnist", "--classes", "1", "--models", "ae-conv", "--data-dir", str(real_data_dir),
                    "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["dataset"], r["detector"]) for r in rows} == {
        ("mnist", "ae-conv"), ("mnist", "isolation-forest"), *((t, d) for t in ("breast-cancer", "wine") for d in ("isolation-forest", "one-class-svm", "ae-mlp"))}
    assert all(0 <= r["auroc"] <= 1 for r in rows)


def test_apps_denoising_benchmark_tunes_the_classical_denoisers(real_data_dir: Path, tmp_path: Path) -> None:
    """The denoising benchmark on tiny settings: the noisy floor, deepgen, and non-local
    means and total variation with their strengths tuned on validation images (values from
    their grids), which beat the noisy input in PSNR."""
    pytest.importorskip("skimage")  # a [dev] dependency: present in CI
    den = _load("apps_denoising")
    out = tmp_path / "d.json"
    assert den.main(["--tiny", "--datasets", "mnist", "--sigmas", "0.5", "--latent-dims", "4,8", "--data-dir", str(real_data_dir), "--device", "cpu",
                     "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"noisy", "deepgen", "deepgen-tried", "nl-means", "tv"} and all(math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in rows.values())
    assert rows["nl-means"]["h_over_sigma"] in den.NLM_H and rows["tv"]["weight"] in den.TV_WEIGHTS
    # The code size with the better validation PSNR is the deepgen row; the other is kept.
    assert {rows["deepgen"]["latent_dim"], rows["deepgen-tried"]["latent_dim"]} == {4, 8}
    assert rows["deepgen"]["val_psnr"] >= rows["deepgen-tried"]["val_psnr"]
    assert rows["nl-means"]["psnr"] > rows["noisy"]["psnr"] and rows["tv"]["psnr"] > rows["noisy"]["psnr"]


def test_apps_speed_reports_fit_time_and_inference_memory(real_data_dir: Path, tmp_path: Path) -> None:
    """The speed-and-size benchmark on tiny settings: each estimator fitted once (a fit
    time), then its inference at two row counts, each with seconds and the size of its
    output (which grows with the rows: codes (N, 10), denoised images (N, 28, 28))."""
    sp = _load("apps_speed")
    out = tmp_path / "s.json"
    assert sp.main(["--tiny", "--estimators", "embedding-ae-conv,denoiser-conv", "--data-dir", str(real_data_dir), "--device", "cpu",
                    "--out", str(out)]) == 0
    rows = {r["estimator"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"embedding-ae-conv", "denoiser-conv"} and all(r["fit_seconds"] > 0 for r in rows.values())
    den = rows["denoiser-conv"]["inference"]
    assert [c["rows"] for c in den] == [256, 1024] and den[1]["output_mib"] == pytest.approx(4 * den[0]["output_mib"], rel=0.05)
    with pytest.raises(SystemExit):
        sp.main(["--tiny", "--estimators", "embeding", "--device", "cpu"])


def test_vae_nll_benchmark_takes_settings_binarization_and_the_iwae_schedule(real_data_dir: Path, tmp_path: Path) -> None:
    """The IWAE-protocol script on smoke settings: model settings over the paper's
    architecture, trainer settings, static binarization and the paper's staircase all reach
    the run, and the row says it is not the paper's protocol."""
    vae = _load("vae_mnist_nll")
    out = tmp_path / "v.json"
    r = vae.main(["--data-dir", str(real_data_dir), "--device", "cpu", "--epochs", "1", "--k", "10", "--limit-test", "50",
                  "--max-train", "500", "--batch-size", "100", "--schedule", "iwae", "--binarization", "static",
                  "--settings", "latent_dim=8", "--train", "grad_clip=5.0", "--paper", "84.78", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["binarization"] == "static" and saved["model_settings"]["latent_dim"] == 8 and saved["paper_nll"] == 84.78
    assert saved["settings"]["schedule"] == "iwae" and math.isfinite(r["nll"]) and r["nll"] > 0 and "8 latent" in saved["label"]
    # The label is the trained model's: a two-layer IWAE run is not called the one-layer VAE.
    import deepgen

    ds = deepgen.load_dataset("mnist-binarized", data_dir=str(real_data_dir), max_train=100)
    two = deepgen.create_model("vae", ds, hidden=(20,), latent_dim=6, stochastic_layers=2, latent_dim2=3, hidden2=(5,), objective="iwae",
                               train_k=5, estimator="dreg", activation="tanh")
    assert vae.describe(two) == "VAE, 2 stochastic layers (20 tanh, 6 latent, then 5, 3 latent), bernoulli, IWAE k=5, DReG"
    conv = deepgen.create_model("vae", ds, network="conv", channels=(8, 16), latent_dim=4, posterior="iaf", iaf_steps=3)
    assert vae.describe(conv).startswith("VAE, 1 stochastic layer (conv 8-16 ") and "IAF posterior (3 steps)" in vae.describe(conv)
    assert "NOT the paper's protocol" in vae.markdown_row(saved)
    from deepgen.errors import UserError

    with pytest.raises(UserError, match="latnet_dim"):
        vae.main(["--data-dir", str(real_data_dir), "--device", "cpu", "--epochs", "1", "--k", "2", "--max-train", "100", "--settings", "latnet_dim=8"])


def test_vae_nll_benchmark_runs_over_several_calls_on_one_schedule(
    real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--total-budget sizes the step budget for the whole run and stops the first call at
    its own --time-budget with a checkpoint; --resume continues on the same schedule with
    the run's own data and settings (not the flags' defaults), to the planned steps.

    The timed calibration is replaced by a fixed 120 steps: timed on shared cores it once
    sized the run at 10 steps, which the first call then finished inside its own budget.
    The first call's 0.02 s cannot hold 120 steps of even this tiny model."""
    vae = _load("vae_mnist_nll")
    monkeypatch.setattr(vae, "step_budget", lambda ds, args, device, planned: (120, 0.0))
    run, out = tmp_path / "run", tmp_path / "v.json"
    common = ["--data-dir", str(real_data_dir), "--device", "cpu", "--k", "5", "--limit-test", "20", "--run-dir", str(run), "--out", str(out)]
    first = vae.main([*common, "--max-train", "400", "--batch-size", "20", "--lr", "2e-3", "--binarization", "static", "--epochs", "50",
                      "--time-budget", "0.02", "--total-budget", "1.5", "--settings", "latent_dim=4"])
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert 0 < first["steps"] < cfg["max_steps"] == 120 and cfg["schedule"] == "cosine" and not first["resumed"]
    second = vae.main([*common, "--resume", "--time-budget", "600"])
    assert second["resumed"] and second["steps"] == cfg["max_steps"] and second["binarization"] == "static"
    assert second["settings"]["batch_size"] == 20 and second["settings"]["lr"] == 2e-3 and second["model_settings"]["latent_dim"] == 4
    assert second["train_seconds"] > first["train_seconds"] and math.isfinite(second["nll"]) and second["max_steps"] == cfg["max_steps"]
    with pytest.raises(SystemExit):  # a folder is needed to go on from
        vae.main(["--device", "cpu", "--resume", "--time-budget", "5"])


def test_diffusion_quality_fast_sampling_runs_the_denoiser_in_bf16_only(real_data_dir: Path) -> None:
    """The quality script's fast sampling: the denoiser under bf16 autocast with a float32
    output (close to the full-precision one), swapped in only inside the context."""
    import deepgen
    from deepgen.data import DataSpec

    dq = _load("diffusion_quality")
    model = deepgen.create_model("ddpm", DataSpec((1, 8, 8), "continuous", num_levels=256), **dq.TINY).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 5.0, 10.0, 19.0])
    with torch.no_grad():
        full = model.denoiser(x, t, None)
        half = dq._Bf16Denoiser(model.denoiser)(x, t, None)
    assert half.dtype == torch.float32 and torch.allclose(half, full, atol=0.05, rtol=0.05)
    net = model.denoiser
    with dq.fast_sampling(model, False):
        assert model.denoiser is net
    assert model.denoiser is net


def test_vae_heads_benchmark_scores_every_head_in_bits_per_dim(real_data_dir: Path, tmp_path: Path) -> None:
    """The heads benchmark on tiny settings: one row per head (a factorised and a
    mixture-density one, K from the name:K syntax), each with a finite IWAE bound in nats
    and bits/dim, the mixture's components as asked."""
    heads = _load("vae_heads")
    out = tmp_path / "h.json"
    assert heads.main(["--tiny", "--dataset", "frey-faces", "--heads", "gaussian-learned,mixture-gaussian-learned:2", "--data-dir", str(real_data_dir),
                       "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["head"] for r in rows] == ["gaussian-learned", "mixture-gaussian-learned:2"]
    assert all(math.isfinite(r["nll"]) and 0 < r["nll_bpd"] < 16 and r["neg_elbo"] >= r["nll"] - 1e-3 for r in rows)
    assert heads.head_settings("mixture-logistic:3") == {"likelihood": "mixture-logistic", "components": 3}


def test_apps_denoising_benchmark_runs_the_classical_denoisers_alone(real_data_dir: Path, tmp_path: Path) -> None:
    """--no-deepgen: the classical rows only, on the same noisy images as a full run (the
    noisy floor agrees exactly)."""
    pytest.importorskip("skimage")
    den = _load("apps_denoising")
    full, alone = tmp_path / "full.json", tmp_path / "alone.json"
    common = ["--tiny", "--datasets", "mnist", "--sigmas", "0.3", "--data-dir", str(real_data_dir), "--device", "cpu"]
    assert den.main([*common, "--out", str(full)]) == 0 and den.main([*common, "--no-deepgen", "--out", str(alone)]) == 0
    a = {r["method"]: r for r in json.loads(full.read_text())["rows"]}
    b = {r["method"]: r for r in json.loads(alone.read_text())["rows"]}
    assert set(b) == {"noisy", "nl-means", "tv"} and b["noisy"]["psnr"] == a["noisy"]["psnr"] and b["tv"] == a["tv"]


def test_ddp_scaling_benchmark_measures_one_and_two_processes(tmp_path: Path) -> None:
    """The scaling script on its CPU smoke settings: one process, then two over gloo, each a
    median throughput from the trainer's log points and the speedup over one process."""
    ddp = _load("ddp_scaling")
    out = tmp_path / "ddp.json"
    assert ddp.main(["--tiny", "--variants", "flat", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["ranks"], r["batch"]) for r in rows] == [(1, 16), (2, 32)]  # the per-GPU batch fixed
    assert rows[0]["speedup"] == 1.0 and all(r["samples_per_s"] > 0 for r in rows)
    assert rows[1]["efficiency"] == pytest.approx(rows[1]["speedup"] / 2, abs=1e-3)
