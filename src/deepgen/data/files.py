"""Locating data files, downloading the ones with a public source, and seeded hold-outs.

Search order for a dataset's files (first hit wins, per file):

1. ``config.data_dir`` (``--data-dir``),
2. ``$DEEPGEN_DATA``,
3. the user cache folder, ``$XDG_CACHE_HOME/deepgen/data`` or ``~/.cache/deepgen/data``.

In each root both ``root/<folder>/<file>`` and ``root/<file>`` are accepted, so
``--data-dir`` may point at the collection or at the dataset's own folder. A missing
dataset with a public source is downloaded into the cache folder only when
``config.download`` is true; its checksum is verified after the download (never on every
load: hashing 40 MB on each run costs more than reading it).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .dataset import DataConfig

log = logging.getLogger(__name__)

# Seconds to wait for a mirror to answer (connect and each read). Long enough for a slow
# link, short enough that a dead mirror does not hang the run before the next one is tried.
TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """Where a dataset folder's files can be downloaded from, with their checksums.

    ``mirrors`` are base URLs tried in order (the file name is appended);
    ``checksums`` maps each file name to ``(md5, sha256 or None)``.
    """

    mirrors: tuple[str, ...]
    checksums: dict[str, tuple[str, str | None]] = field(default_factory=dict)


# Dataset folder name -> its public source. Sources register here at import (idx.py);
# a folder that is absent has no public download.
REMOTES: dict[str, Remote] = {}


def cache_dir() -> Path:
    """The user cache folder for datasets: ``$XDG_CACHE_HOME/deepgen/data`` or ``~/.cache/deepgen/data``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "deepgen" / "data"


def search_roots(config: DataConfig) -> list[Path]:
    """The roots searched, in order: ``config.data_dir``, ``$DEEPGEN_DATA``, the cache folder."""
    roots: list[Path] = []
    if config.data_dir:
        roots.append(Path(config.data_dir).expanduser())
    env = os.environ.get("DEEPGEN_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(cache_dir())
    # The same folder given twice would only repeat itself in the error message.
    unique: list[Path] = []
    for r in roots:
        if r not in unique:
            unique.append(r)
    return unique


def _variants(filename: str) -> list[str]:
    # A .gz file may also sit there already decompressed (readers detect gzip by its magic).
    return [filename, filename[:-3]] if filename.endswith(".gz") else [filename]


def find_files(folder: str, filenames: list[str], config: DataConfig, dataset: str) -> dict[str, Path]:
    """Locate every file of a dataset, downloading it when allowed; ``{filename: path}``.

    Raises :class:`UserError` naming every folder searched and every file expected when a
    file is missing (and cannot or may not be downloaded).
    """
    roots = search_roots(config)
    candidates = [d for r in roots for d in (r / folder, r)]
    found: dict[str, Path] = {}
    for name in filenames:
        for d in candidates:
            hit = next((d / v for v in _variants(name) if (d / v).is_file()), None)
            if hit is not None:
                found[name] = hit
                break
    missing = [n for n in filenames if n not in found]
    if not missing:
        return found

    remote = REMOTES.get(folder)
    if config.download and remote is not None:
        dest_dir = cache_dir() / folder
        for name in missing:
            md5, sha256 = remote.checksums[name]
            urls = [m.rstrip("/") + "/" + name for m in remote.mirrors]
            found[name] = download(urls, dest_dir / name, md5, sha256)
        return found

    searched = ", ".join(str(d) for d in candidates)
    expected = ", ".join(filenames)
    what = f"expected {expected}" if len(missing) == len(filenames) else f"missing {', '.join(missing)} (expected {expected})"
    message = (
        f"dataset {dataset!r} not found: {what}. Searched: {searched}. "
        f"Put the files in {roots[0] / folder} (or point --data-dir / DEEPGEN_DATA at a folder holding "
        f"'{folder}/'). "
    )
    if remote is None:
        message += f"Dataset {dataset!r} has no public download source, so it must be copied there by hand."
    else:
        message += "When online, --set download=true fetches it into the cache folder."
    raise UserError(message)


def download(urls: Sequence[str], dest: Path, md5: str, sha256: str | None = None) -> Path:
    """Fetch ``dest`` from the first mirror in ``urls`` that answers; verify; return ``dest``.

    The bytes go to a temporary file in ``dest``'s folder, are hashed while they arrive,
    and only a file whose checksum matches is moved into place with ``os.replace`` (atomic
    on one file system), so an interrupted or corrupt download never leaves a file that a
    later load would trust. A network error moves on to the next mirror; a checksum
    mismatch also tries the next mirror (a mirror can serve an error page with status 200)
    and, if no mirror gives the right bytes, raises :class:`UserError`.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the download folder {dest.parent}: {e}") from None
    failures: list[str] = []
    mismatch = False
    for url in urls:
        log.info("downloading %s from %s", dest.name, url)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            h_md5, h_sha = hashlib.md5(), hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        h_md5.update(chunk)
                        h_sha.update(chunk)
            except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets
                failures.append(f"{url}: {e}")
                continue
            got_md5, got_sha = h_md5.hexdigest(), h_sha.hexdigest()
            if got_md5 != md5.lower() or (sha256 is not None and got_sha != sha256.lower()):
                mismatch = True
                failures.append(f"{url}: checksum mismatch (md5 {got_md5}, expected {md5})")
                continue
            os.replace(tmp, dest)
            return dest
        finally:
            # Never leave a partial or unverified file behind (after os.replace it is gone).
            tmp.unlink(missing_ok=True)
    what = "a checksum mismatch" if mismatch else "a network error"
    raise UserError(
        f"could not download {dest.name} ({what}; nothing was saved). Tried: {'; '.join(failures)}. "
        f"Copy the file into {dest.parent} by hand, or retry when the network is available."
    )


def holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)`` of a seeded random hold-out of ``round(n * fraction)`` examples.

    Used by sources without an official test split. Both index tensors (int64) keep the
    permuted order, so ``max_train`` takes a random, not a contiguous, subset.
    """
    if n < 2:
        raise UserError(f"need at least 2 examples to hold out a test split, got {n}.")
    n_test = min(n - 1, max(1, round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]
