"""Streaming an image folder from disk: deepgen's StreamingLoader against torchvision's
ImageFolder + DataLoader (the usual PyTorch pipeline), and both against data resident on
the device, on a folder of PNG files written from MNIST.

Measures, for each worker count: images/s delivered to the device by the loader alone
(PNG decode, batching, host-to-device copy, conversion to [0, 1] floats), and training
steps/s of a DCGAN fed by each loader (eager and with ``cuda_graph=true``), so the table
says where streaming starts to limit training.

    python benchmarks/stream_speed.py --data-dir .data --device cuda --images 20000 --size 64 \
        --workers 0,4,8,15 --batches 150 --out $OUT/stream.json

The folder is written once under ``--folder`` (default: a temporary folder): MNIST training
digits resized to ``--size`` x ``--size`` and repeated over 3 channels (face-sized RGB PNGs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from timing import sync, time_fit, write_record  # noqa: E402

import deepgen  # noqa: E402
from deepgen.data import make_loader  # noqa: E402
from deepgen.training import TrainConfig, Trainer  # noqa: E402


def write_folder(folder: Path, n: int, size: int, data_dir: str | None) -> Path:
    """n RGB PNGs of MNIST digits (size x size), in 10 class folders; reused when present."""
    done = folder / f".complete-{n}-{size}"
    if done.exists():
        return folder
    mnist = deepgen.load_dataset("mnist", data_dir=data_dir)
    x, y = mnist.train.x[:n].numpy(), mnist.train.y[:n].tolist()  # (n, 1, 28, 28) uint8
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(len(x)):
        im = Image.fromarray(x[i, 0]).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        im.save(folder / str(y[i]) / f"{i:06d}.png")
    done.touch()
    return folder


def loader_rate(next_batch, batches: int, warmup: int, device: torch.device) -> float:
    """Images/s over ``batches`` batches after ``warmup`` (worker start-up excluded)."""
    n = 0
    for _ in range(warmup):
        next_batch()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        n += len(next_batch())
    sync(device)
    rate = n / (time.perf_counter() - t0)
    getattr(next_batch, "close", lambda: None)()  # stop this loader's workers before the next is timed
    return rate


def deepgen_batches(ds, batch: int, device: torch.device, workers: int):
    loader = make_loader(ds, batch, device, seed=0, workers=workers)
    next_batch = lambda: loader.next().x  # noqa: E731
    next_batch.close = loader.close  # type: ignore[attr-defined]
    return next_batch


def torchvision_batches(folder: Path, batch: int, device: torch.device, workers: int):
    """The peer: ImageFolder + ToTensor + a shuffling DataLoader, pinned, copied without blocking."""
    from torchvision import datasets, transforms

    data = datasets.ImageFolder(str(folder), transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
        drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
    )
    state = {"it": iter(loader)}

    def close() -> None:
        getattr(state["it"], "_shutdown_workers", lambda: None)()

    def next_batch() -> torch.Tensor:
        try:
            x, _ = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            x, _ = next(state["it"])
        return x.to(device, non_blocking=True)

    next_batch.close = close  # type: ignore[attr-defined]
    return next_batch


def train_rate(ds, device: torch.device, workers: int, graph: bool, steps: int, data_config) -> float:
    model = deepgen.create_model("dcgan", ds)
    cfg = TrainConfig(epochs=10_000, batch_size=128, device=str(device), progress=False, tensorboard=False,
                      log_every=100, cuda_graph=graph, seed=0)
    trainer = Trainer(model, ds, cfg, None, data_config=data_config.replace(workers=workers))
    rate = steps / time_fit([trainer], warmup=30, steps=steps, device=device)
    trainer.loader.close()
    return rate


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding mnist/")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--folder", default=None, help="where the PNG folder is written (default: a temporary folder)")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", default="0,4,8", help="comma-separated worker counts")
    p.add_argument("--batches", type=int, default=150, help="timed batches per loader measurement")
    p.add_argument("--train-steps", type=int, default=150, help="timed DCGAN steps per training measurement (0: skip)")
    p.add_argument("--no-peer", action="store_true", help="skip torchvision (not installed)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",")]

    tmp = tempfile.TemporaryDirectory() if args.folder is None else None
    t0 = time.perf_counter()
    folder = write_folder(Path(args.folder or tmp.name) / "png", args.images, args.size, args.data_dir)
    print(f"PNG folder ready in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    streamed = deepgen.load_dataset(str(folder), max_resident_mb=0)
    index_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    resident = deepgen.load_dataset(str(folder))
    decode_all_seconds = time.perf_counter() - t0
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{len(streamed.train)} training images {streamed.spec.shape} on {hardware}, {os.cpu_count()} CPU cores; "
          f"indexing the folder {index_seconds:.1f} s, decoding it all into memory {decode_all_seconds:.1f} s", flush=True)

    rows: list[dict] = []
    warm = 10
    start = time.perf_counter()
    rows.append({"loader": "deepgen resident (on the device)", "workers": 0,
                 "images_per_s": loader_rate(deepgen_batches(resident, args.batch, device, 0), args.batches, warm, device)})
    for w in workers:
        rows.append({"loader": "deepgen streaming", "workers": w,
                     "images_per_s": loader_rate(deepgen_batches(streamed, args.batch, device, w), args.batches, warm, device)})
        if not args.no_peer:
            rows.append({"loader": "torchvision ImageFolder + DataLoader (peer)", "workers": w,
                         "images_per_s": loader_rate(torchvision_batches(folder, args.batch, device, w), args.batches, warm, device)})
        print(*rows[-1 if args.no_peer else -2 :], f"({time.perf_counter() - start:.0f} s)", flush=True)
    if args.train_steps:
        data_config = deepgen.DataConfig(name=str(folder), max_resident_mb=0)
        for graph in ([False, True] if device.type == "cuda" else [False]):
            rows.append({"training": f"dcgan{' cuda_graph' if graph else ''}", "data": "resident",
                         "steps_per_s": train_rate(resident, device, 0, graph, args.train_steps, data_config.replace(max_resident_mb=4096))})
            w = max(workers)
            rows.append({"training": f"dcgan{' cuda_graph' if graph else ''}", "data": f"streaming, {w} workers",
                         "steps_per_s": train_rate(streamed, device, w, graph, args.train_steps, data_config)})
            print(rows[-2], rows[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\nbatch {args.batch}, {args.batches} timed batches after {warm}; {hardware}, torch {torch.__version__}")
    print("| loader | workers | images/s |\n| --- | --- | --- |")
    for r in rows:
        if "loader" in r:
            print(f"| {r['loader']} | {r['workers']} | {r['images_per_s']:,.0f} |")
    if args.train_steps:
        print("\n| training (batch 128) | data | steps/s |\n| --- | --- | --- |")
        for r in rows:
            if "training" in r:
                print(f"| {r['training']} | {r['data']} | {r['steps_per_s']:,.1f} |")
    if args.out:
        write_record(args.out, rows, hardware)
    if tmp is not None:
        tmp.cleanup()
    return rows


if __name__ == "__main__":
    main()
