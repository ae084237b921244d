"""Shared fixtures.

Tests that need the real datasets read them through ``DEEPGEN_DATA``. Where it is unset
they skip with a reason, except when ``DEEPGEN_REQUIRE_DATA=1`` (``.ci/run`` sets it):
then a missing folder is a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny test models run fastest on one thread, and CI has only two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def no_pictures():
    """For a module whose tests check what CLI commands say and accept (``pytestmark =
    pytest.mark.usefixtures("no_pictures")``): ``train`` draws no pictures and writes no
    analysis. Those come from the same code for every run, and the CLI's and each family's
    own tests draw and check them."""
    import deepgen.analysis
    import deepgen.cli

    with pytest.MonkeyPatch.context() as m:
        m.setattr(deepgen.cli, "_pictures", lambda: [])
        m.setattr(deepgen.analysis, "write_analysis", lambda *a, **k: [])
        yield


@pytest.fixture
def real_data_dir() -> Path:
    root = os.environ.get("DEEPGEN_DATA")
    required = os.environ.get("DEEPGEN_REQUIRE_DATA") == "1"
    if not root or not Path(root).is_dir():
        message = f"real datasets not found: DEEPGEN_DATA={root!r} is not a folder"
        if required:
            pytest.fail(message + " (DEEPGEN_REQUIRE_DATA=1)")
        pytest.skip(message)
    return Path(root)


# -- the real MNIST classifier, trained in the background ---------------------------------
#
# tests/test_features.py checks the stock MNIST classifier (deepgen.metrics.features.
# mnist_classifier: 4 epochs of full MNIST, about 90 s on two cores). Most of this suite runs
# on one thread, leaving the second core idle, so the classifier is trained there: a niced
# child process started with the session trains it into the session's feature cache, the
# same call and the same recipe as in-process, and `mnist_net` waits for it and loads it.
# A child that fails leaves the training to `mnist_net` (in-process, as before).

_CLASSIFIER_JOB = """
import json, os, sys
os.nice(19)  # only idle CPU: the tests in the foreground come first
import torch
torch.set_num_threads(int(sys.argv[3]))
from deepgen.metrics.features import mnist_classifier
net = mnist_classifier(data_dir=sys.argv[1], cache_dir=sys.argv[2], progress=False)
print(json.dumps({"describe": net.describe(), "accuracy": net.accuracy, "data_sha256": net.data_sha256}))
"""


class ClassifierJob:
    """The child process training the MNIST classifier into ``cache``."""

    def __init__(self, data_dir: str, cache: Path, log: Path, threads: int) -> None:
        src = Path(__file__).resolve().parents[1] / "src"
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": str(threads)}
        self.log = log
        self._out = open(log.with_suffix(".out"), "w+")
        self._err = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _CLASSIFIER_JOB, data_dir, str(cache), str(threads)],
                                     env=env, stdout=self._out, stderr=self._err, text=True)
        self.fresh: dict | None = None

    def wait(self) -> dict | None:
        """The freshly trained network's describe(), accuracy and data_sha256, or None where
        the child failed (its stderr is in ``self.log``)."""
        if self.proc.returncode is None:
            self.proc.wait()
            self._out.seek(0)
            lines = self._out.read().strip().splitlines()
            if self.proc.returncode == 0 and lines:
                self.fresh = json.loads(lines[-1])
        return self.fresh

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files whose tests use ``mnist_net`` run last, each in its own order: the
    background training (about 210 s of one core) then has the idle core of the whole
    session instead of the part before tests/test_features.py, and those tests find the
    network trained instead of waiting for it."""
    users = {item.path for item in items if "mnist_net" in getattr(item, "fixturenames", ())}
    if users:
        items[:] = [item for item in items if item.path not in users] + [item for item in items if item.path in users]


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the session, so the real MNIST classifier is trained once."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session", autouse=True)
def mnist_classifier_job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start the background training where a collected test uses ``mnist_net`` and the real
    data are there (without them ``real_data_dir`` skips or fails those tests, as always)."""
    items = request.session.items
    users = [item for item in items if "mnist_net" in getattr(item, "fixturenames", ())]
    root = os.environ.get("DEEPGEN_DATA")
    if not users or not root or not Path(root).is_dir():
        yield None
        return
    # One thread while other tests hold the foreground; both cores when only its own file runs.
    alone = all(item.path == users[0].path for item in items)
    cache = request.getfixturevalue("feature_cache")
    job = ClassifierJob(root, cache, tmp_path_factory.mktemp("classifier-job") / "train.log", threads=2 if alone else 1)
    try:
        yield job
    finally:
        job.close()
