"""Sampling speed of the autoregressive family (random weights: speed does not depend on them).

* Transformer (the 10.7M-parameter default): tokens per second drawing a batch of
  sequences of 256 and of 1,024 tokens with the key/value cache, its one-position step
  replayed as a CUDA graph (``decode_graph=true``, the default on CUDA) and run eagerly
  (``decode_graph=false``), and without a cache (re-running the whole prefix for every
  position, as nanoGPT's ``generate`` and pytorch-generative do).
* Gated PixelCNN at the binarized-MNIST benchmark size (10 layers of 128 channels) on
  shape (1, 28, 28): images per second for ``--pixelcnn-images`` samples with the cached
  sampler (Ramachandran et al. 2017; batches of ``--image-batch``), and for the naive one
  (one pass of the whole network per pixel) on ``--naive-images`` images in one batch.
* MADE (one hidden layer of 8,000) on the same shape: images per second.

Every figure is wall-clock after one untimed warm-up call, with the device synchronised.

    python benchmarks/ar_sampling.py --device cuda --out $OUT/ar_sampling.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import deepgen
from deepgen.data.dataset import DataSpec
from deepgen.models.autoregressive import Autoregressive
from deepgen.training import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup=None) -> float:
    """Seconds of one call of ``fn`` after one call of ``warmup`` (default ``fn`` itself):
    kernel selection and autotuning happen outside the timed call."""
    (warmup or fn)()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def uncached(model, n: int, generator: torch.Generator) -> torch.Tensor:
    """Sample by re-running the whole prefix at every position (no cache)."""
    ids = torch.zeros(n, model.length, dtype=torch.long, device=model.device)
    for t in range(model.length):
        logits = model.logits(ids)[:, t]
        ids[:, t] = torch.multinomial(F.softmax(logits.float(), -1), 1, generator=generator)[:, 0]
    return ids


def transformer_rows(device: torch.device, batch: int, lengths: list[int], tiny: bool, dtype: torch.dtype) -> list[dict]:
    rows = []
    for length in lengths:
        spec = DataSpec((length,), "tokens", vocab_size=65)
        size = {"layers": 2, "heads": 2, "width": 32} if tiny else {}
        model = deepgen.create_model("transformer", spec, dropout=0.0, **size).to(device, dtype).eval()
        eager = deepgen.create_model("transformer", spec, dropout=0.0, decode_graph=False, **size).to(device, dtype).eval()
        eager.load_state_dict(model.state_dict())
        gen = torch.Generator(device).manual_seed(0)
        graph_s = _timed(lambda m=model, g=gen: m.sample(batch, generator=g), device)
        cached_s = _timed(lambda m=eager, g=gen: m.sample(batch, generator=g), device)
        # Warm the uncached path on a 64-token prefix: the full warm-up would cost as much as the measurement.
        short = deepgen.create_model("transformer", DataSpec((min(64, length),), "tokens", vocab_size=65), dropout=0.0, **size).to(device, dtype).eval()
        uncached_s = _timed(lambda m=model, g=gen: uncached(m, batch, g), device, warmup=lambda s_=short, g=gen: uncached(s_, batch, g))
        tokens = batch * length
        rows.append({
            "model": "transformer", "length": length, "batch": batch, "dtype": str(dtype),
            "graph_tokens_per_s": round(tokens / graph_s), "cached_tokens_per_s": round(tokens / cached_s),
            "uncached_tokens_per_s": round(tokens / uncached_s), "graph_over_cached": round(cached_s / graph_s, 2),
            "cached_over_uncached": round(uncached_s / cached_s, 2), "graph_s": round(graph_s, 3), "cached_s": round(cached_s, 3),
            "uncached_s": round(uncached_s, 3),
        })
        print(rows[-1], flush=True)
    return rows


def image_rows(device: torch.device, images: int, batch: int, naive_images: int, tiny: bool) -> list[dict]:
    spec = DataSpec((1, 28, 28) if not tiny else (1, 6, 6), "binary")
    pixelcnn = {"channels": 8, "layers": 2, "out_hidden": 8} if tiny else {"channels": 128, "layers": 10}
    made = {"hidden": (32,)} if tiny else {"hidden": (8000,)}
    rows = []

    def draw(sampler, m, g, total: int, size: int) -> None:
        for start in range(0, total, size):
            sampler(m, min(size, total - start), g)

    def cached(m, k, g):
        return m.sample(k, generator=g)

    def naive(m, k, g):  # the whole network per pixel: the shared autoregressive sampler
        x = torch.zeros((k, *spec.shape), device=device)
        return Autoregressive.complete(m, x, torch.zeros_like(x, dtype=torch.bool), generator=g)

    cases = [("pixelcnn", pixelcnn, "cached", cached, images, batch), ("pixelcnn", pixelcnn, "naive", naive, naive_images, naive_images),
             ("made", made, "per-dimension", cached, images, batch)]
    for name, size, sampler_name, sampler, total, per_call in cases:
        model = deepgen.create_model(name, spec, **size).to(device).eval()
        gen = torch.Generator(device).manual_seed(0)
        seconds = _timed(lambda s_=sampler, m=model, g=gen, t=total, b=per_call: draw(s_, m, g, t, b), device,
                         warmup=lambda s_=sampler, m=model, g=gen, b=per_call: s_(m, min(b, 64), g))
        rows.append({"model": name, "sampler": sampler_name, "settings": size, "images": total, "batch": per_call,
                     "images_per_s": round(total / seconds, 1), "seconds": round(seconds, 2)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=64, help="Transformer sequences drawn at once")
    p.add_argument("--lengths", default="256,1024")
    p.add_argument("--pixelcnn-images", type=int, default=10000)
    p.add_argument("--image-batch", type=int, default=5000)
    p.add_argument("--naive-images", type=int, default=500, help="images of the naive PixelCNN sampler, in one batch")
    p.add_argument("--bf16", action="store_true", help="Transformer weights in bf16")
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU smoke test)")
    p.add_argument("--out", default="ar_sampling.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    lengths = [int(v) for v in args.lengths.split(",")] if not args.tiny else [16]
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    rows = transformer_rows(device, args.batch if not args.tiny else 2, lengths, args.tiny, dtype)
    rows += image_rows(device, args.pixelcnn_images if not args.tiny else 4, args.image_batch if not args.tiny else 2, args.naive_images if not args.tiny else 2, args.tiny)
    record = {"rows": rows, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
