"""The estimators' fit time on 60,000 MNIST images, and their memory when ``transform`` is given many more rows than one batch.

Issue 14's "speed and size": each estimator of :mod:`deepgen.apps` (``--estimators``)
fits the 60,000 MNIST training images (uint8 (N, 28, 28), as a user would pass them) for
``--epochs`` epochs, timed from ``fit``'s call to its return (data conversion, model
construction and training included; the first epoch's one-off costs too). Then its
inference method (``transform``, or ``score_samples`` for the detector) runs on
``--rows`` rows (MNIST's training images repeated), each size timed and with its peak
memory:

* on CUDA: ``torch.cuda.max_memory_allocated`` during the call, minus what was allocated
  before it (the model's weights): it must stay flat as the rows grow, since inference
  runs ``batch_size`` rows at a time;
* on the CPU: the process's peak resident memory during the call (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs`` before each call) minus the resident memory before it,
  and the size of the returned array beside it (which has to grow with the rows).

On the GPU: ``python benchmarks/apps_speed.py --data-dir .data --device cuda --out $OUT/apps_speed.json``;
on 2 CPU cores: ``python benchmarks/apps_speed.py --data-dir ../shared/data --device cpu --threads 2``.
CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from timing import common_args, sync, write_record

import deepgen
from deepgen.apps import AutoencoderDenoiser, AutoencoderEmbedding, AutoencoderOutlierDetector
from deepgen.bench import hardware
from deepgen.training import resolve_device

CONV = {"network": "conv", "channels": (32, 64)}
TINY_CONV = {"network": "conv", "channels": (8, 16)}


def estimators(tiny: bool) -> dict[str, tuple[type, dict]]:
    """name -> (estimator class, its parameters but epochs / device / batch size)."""
    conv = TINY_CONV if tiny else CONV
    return {
        "embedding-ae-conv": (AutoencoderEmbedding, {"model": "ae", "settings": conv, "latent_dim": 10}),
        "embedding-vae-conv": (AutoencoderEmbedding, {"model": "vae", "settings": conv, "latent_dim": 10}),
        "denoiser-conv": (AutoencoderDenoiser, {"settings": conv, "latent_dim": 32}),
        "detector-ae-reconstruction": (AutoencoderOutlierDetector, {"model": "ae", "settings": conv, "score_type": "reconstruction"}),
        "detector-vae-likelihood": (AutoencoderOutlierDetector, {"model": "vae", "settings": conv, "score_type": "likelihood"}),
    }


def _status_kib(field: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status in KiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (Linux: "5" into clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measured(call, x: np.ndarray, device: torch.device) -> dict:
    """Seconds and peak memory (MiB) of ``call(x)`` beyond what was held before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset = _reset_peak_rss()
        base = _status_kib("VmRSS") if reset else None
    t0 = time.perf_counter()
    out = np.asarray(call(x))
    sync(device)
    row = {"rows": len(x), "seconds": round(time.perf_counter() - t0, 2), "output_mib": round(out.nbytes / 2**20, 3)}
    if device.type == "cuda":
        row["peak_mib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
    elif base is not None:
        peak = _status_kib("VmHWM")
        row["peak_mib"] = round(((peak or base) - base) / 1024, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimators", default="", help="comma-separated names (default: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rows", default="10000,60000,240000", help="rows given to transform / score_samples")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    common_args(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ds = deepgen.load_dataset("mnist", data_dir=args.data_dir, max_train=512 if args.tiny else 0)
    x = ds.train.x.reshape(len(ds.train), 28, 28).numpy()  # uint8 pixels, as a user has them
    table = estimators(args.tiny)
    names = args.estimators.split(",") if args.estimators else list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        p.error(f"unknown estimators {', '.join(unknown)}; known: {', '.join(table)}")
    sizes = [int(r) for r in args.rows.split(",")] if not args.tiny else [256, 1024]
    rows = []
    for name in names:
        cls, params = table[name]
        est = cls(**params, epochs=args.epochs, batch_size=args.batch_size, device=str(device), random_state=args.seed)
        t0 = time.perf_counter()
        est.fit(x)
        sync(device)
        fit_s = time.perf_counter() - t0
        infer = est.score_samples if isinstance(est, AutoencoderOutlierDetector) else est.transform
        calls = [measured(infer, np.resize(x, (n, *x.shape[1:])), device) for n in sizes]
        row = {"estimator": name, "fit_images": len(x), "epochs": args.epochs, "fit_seconds": round(fit_s, 1),
               "seconds_per_epoch": round(fit_s / args.epochs, 1), "inference": calls}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{hardware(device)}, torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    print("| estimator | fit (images, epochs) | fit seconds | inference: rows -> seconds, peak MiB (output MiB) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        inf = "; ".join(f"{c['rows']:,} -> {c['seconds']} s, {c.get('peak_mib', '?')} MiB ({c['output_mib']})" for c in r["inference"])
        print(f"| {r['estimator']} | {r['fit_images']:,}, {r['epochs']} | {r['fit_seconds']} | {inf} |")
    if args.out:
        write_record(args.out, rows, hardware(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
