"""Review s18: user mistakes on the command line that did not get one clear line and exit 2.

Each test names the defect it pins:

1. ``sample --n 100000000`` (more samples than memory holds) ended in a RuntimeError
   traceback from the allocator, exit status 1; now one line saying to ask for fewer.
2. ``train --resume RUN --set epoch=3`` (a misspelt name) listed every model, trainer and
   data setting as accepted, though a resume refuses all but the trainer's (and workers).
3. ``bench mnist --models ,`` (an empty list) ran every preset, the whole leaderboard; and
   an unknown preset's message listed names twice (a preset label that is also a model name).
4. ``demo faces --data PATH`` where PATH is no folder said that image_size and
   image_channels apply to a folder of images only, settings the user never gave.
5. ``--set hidden=256,,3`` (an empty item in a list) was read as ``256,3``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepgen.bench import select_presets
from deepgen.cli import main
from deepgen.errors import UserError
from deepgen.models import model_class

QUIET = ["--set", "progress=false", "--set", "tensorboard=false", "--set", "max_train=64", "--set", "max_steps=1"]


pytestmark = pytest.mark.usefixtures("no_pictures")  # conftest: train draws no pictures here


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("s18") / "gan"
    assert main(["train", "gan", "--data", "ring8", *QUIET, "--out", str(run)]) == 0
    return run


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# 1 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 51200000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    MemoryError(),
])
def test_sample_too_many_for_memory_is_one_line(gan_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def sample(*a: object, **k: object) -> torch.Tensor:
        raise error

    monkeypatch.setattr(model_class("gan"), "sample", sample)
    out = tmp_path / "s.npy"
    err = _refused(capsys, ["sample", str(gan_run), "--n", "100000000", "--out", str(out)])
    assert "memory" in err and "--n" in err
    assert not out.exists()


def test_a_runtime_error_that_is_not_memory_still_propagates(gan_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def sample(*a: object, **k: object) -> torch.Tensor:
        raise RuntimeError("a bug")

    monkeypatch.setattr(model_class("gan"), "sample", sample)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["sample", str(gan_run), "--n", "4", "--out", str(tmp_path / "s.npy")])


# 2 -----------------------------------------------------------------------------------------


def test_resume_unknown_setting_names_only_what_resume_takes(gan_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["train", "--resume", str(gan_run), "--set", "epoch=3"])
    assert "'epochs'" in err  # the close name
    assert "workers" in err and "max_steps" in err
    assert "noise_dim" not in err and "toy_noise" not in err  # model and data settings cannot change on resume
    err = _refused(capsys, ["train", "--resume", str(gan_run), "--set", "train.epochz=3"])
    assert "'epochs'" in err and "noise_dim" not in err


# 3 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("models", [",", "", " , "])
def test_bench_empty_models_list_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], models: str) -> None:
    out = tmp_path / "bench"
    err = _refused(capsys, ["bench", "mnist", "--models", models, "--budget", "1", "--out", str(out)])
    assert "--models" in err and "vae" in err
    assert not out.exists()


def test_bench_unknown_preset_lists_each_name_once() -> None:
    with pytest.raises(UserError) as e:
        select_presets("mnist", ["foo"])
    accepted = str(e.value).split("Accepted: ")[1].rstrip(".").split(", ")
    assert len(accepted) == len(set(accepted)), accepted
    with pytest.raises(UserError, match="one or more"):
        select_presets("mnist", [])


# 4 -----------------------------------------------------------------------------------------


def test_demo_faces_data_that_is_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "faces"
    for data in (tmp_path / "missing", tmp_path / "a.npy"):
        if data.suffix:
            data.write_bytes(b"")
        err = _refused(capsys, ["demo", "faces", "--data", str(data), "--out", str(out)])
        assert "folder" in err and "image_size" not in err
        assert not out.exists()


# 5 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["256,,3", ",256", "256,,"])
def test_list_setting_with_an_empty_item_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    out = tmp_path / "run"
    err = _refused(capsys, ["train", "vae", "--data", "digits", "--set", f"hidden={value}", *QUIET, "--out", str(out)])
    assert "hidden" in err and "empty" in err
    assert not out.exists()


def test_list_setting_forms_that_stay_accepted() -> None:
    from deepgen.models.vae import VAEConfig

    assert VAEConfig().with_overrides({"hidden": "256,3"}).hidden == (256, 3)
    assert VAEConfig().with_overrides({"hidden": "(256,)"}).hidden == (256,)  # Python's 1-tuple
    assert VAEConfig().with_overrides({"hidden": " 256 , 3 "}).hidden == (256, 3)
