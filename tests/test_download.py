"""Downloading a dataset with a public source, against a local HTTP server: checksums
verified, nothing half-written left behind, mirrors tried in order."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from deepgen.data import files as data_files
from deepgen.data import idx as _idx  # noqa: F401  (registers the real mirrors before tests patch them)
from deepgen.data import load_dataset
from deepgen.data.files import Remote, download
from deepgen.errors import UserError

FILES = {
    "train-images-idx3-ubyte.gz": (12, 28, 28),
    "train-labels-idx1-ubyte.gz": (12,),
    "t10k-images-idx3-ubyte.gz": (5, 28, 28),
    "t10k-labels-idx1-ubyte.gz": (5,),
}


def _idx_gz(arr: np.ndarray) -> bytes:
    header = struct.pack(f">I{arr.ndim}I", 0x800 | arr.ndim, *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


class _Server:
    """A static file server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval: shutdown() waits for the loop to notice.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Server, dict[str, np.ndarray]]]:
    """Small MNIST-format files under <server>/mnist/, an empty cache, no proxy."""
    rng = np.random.default_rng(0)
    arrays = {}
    (tmp_path / "www" / "mnist").mkdir(parents=True)
    for name, shape in FILES.items():
        high = 10 if len(shape) == 1 else 256
        arrays[name] = rng.integers(0, high, shape, dtype=np.uint8)
        (tmp_path / "www" / "mnist" / name).write_bytes(_idx_gz(arrays[name]))
    monkeypatch.delenv("DEEPGEN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = _Server(tmp_path / "www")
    yield server, arrays
    server.close()


def _dead_url() -> str:
    """A URL on a port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _checksums(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for name in FILES:
        data = (root / name).read_bytes()
        out[name] = (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())
    return out


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "deepgen" / "data" / "mnist"


def test_download_verifies_and_loads(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, arrays = served
    sums = _checksums(tmp_path / "www" / "mnist")
    # A dead first mirror: the loader falls back to the second one.
    remote = Remote(mirrors=(_dead_url(), server.url + "/mnist/"), checksums=sums)
    monkeypatch.setitem(data_files.REMOTES, "mnist", remote)

    with pytest.raises(UserError, match="download=true"):  # not without permission
        load_dataset("mnist")
    assert server.requests == []

    ds = load_dataset("mnist", download=True)
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in FILES)
    assert (len(ds.train), len(ds.test)) == (12, 5)
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]))
    assert ds.test.y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    cached = sorted(p.name for p in _cache(tmp_path).iterdir())
    assert cached == sorted(FILES)  # and no temporary files
    for name in FILES:
        assert hashlib.md5((_cache(tmp_path) / name).read_bytes()).hexdigest() == sums[name][0]

    # Now cached: a second load needs no network, even with every mirror dead.
    monkeypatch.setitem(data_files.REMOTES, "mnist", Remote(mirrors=(_dead_url(),), checksums=sums))
    again = load_dataset("mnist", download=True)
    assert torch.equal(again.train.x, ds.train.x) and len(server.requests) == len(FILES)


def test_wrong_checksum_leaves_nothing(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = served
    sums = _checksums(tmp_path / "www" / "mnist")
    sums["train-images-idx3-ubyte.gz"] = ("0" * 32, None)
    remote = Remote(mirrors=(server.url + "/mnist/",), checksums=sums)
    monkeypatch.setitem(data_files.REMOTES, "mnist", remote)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz \(a checksum mismatch; nothing was saved\)"):
        load_dataset("mnist", download=True)
    folder = _cache(tmp_path)
    assert not (folder / "train-images-idx3-ubyte.gz").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_sha256_is_checked_too(served, tmp_path: Path) -> None:
    server, _ = served
    name = "t10k-labels-idx1-ubyte.gz"
    md5, _ = _checksums(tmp_path / "www" / "mnist")[name]
    dest = tmp_path / "out" / name
    with pytest.raises(UserError, match="checksum mismatch"):
        download([server.url + "/mnist/" + name], dest, md5, "f" * 64)
    assert list(dest.parent.iterdir()) == []


def test_mirrors_are_tried_in_order(served, tmp_path: Path) -> None:
    server, arrays = served
    name = "train-labels-idx1-ubyte.gz"
    md5, sha = _checksums(tmp_path / "www" / "mnist")[name]
    dest = tmp_path / "out" / name
    # Refused connection, then HTTP 404, then the good mirror.
    urls = [_dead_url() + name, server.url + "/missing/" + name, server.url + "/mnist/" + name]
    assert download(urls, dest, md5, sha) == dest
    assert server.requests == ["/missing/" + name, "/mnist/" + name]
    assert dest.read_bytes() == (tmp_path / "www" / "mnist" / name).read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [name]


def test_all_mirrors_dead_is_a_user_error(served, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "x.gz"
    with pytest.raises(UserError, match=r"could not download x\.gz \(a network error; nothing was saved\)\. Tried: http"):
        download([_dead_url() + "x.gz"], dest, "0" * 32, None)
    assert list(dest.parent.iterdir()) == []
