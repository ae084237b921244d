"""Training throughput of deepgen's trainer against a hand-written PyTorch loop, same network.

The network is pythae's default MLP VAE for MNIST (BENCHMARKS.md, "Speed"): encoder
784-512-(16, 16), decoder 16-512-784, Bernoulli decoder, Adam, dynamically binarized
MNIST resident on the device. The peer is the plainest fast PyTorch loop: data on the
GPU, a random permutation sliced per batch, one fused Adam step, no logging. deepgen runs
its full trainer (phases, logging sums, lr schedule, NaN guard every ``log_every`` steps).
With ``--cuda-graph`` on a GPU, both also run with the step captured in a CUDA graph: the
peer as PyTorch's whole-network example (static input buffer, capturable fused Adam), the
trainer with ``cuda_graph=true``.

    python benchmarks/train_speed.py --data-dir .data --device cuda --steps 2000 --out $OUT/speed.json

Prints samples/s for each system and batch size, and the ratio deepgen / plain.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch.nn.functional as F
from timing import ResidentBatches, time_fit, time_steps, write_record
from torch import nn

import deepgen
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all

ARCH = dict(hidden=(512,), latent_dim=16, activation="relu", likelihood="bernoulli", lr=1e-3)


class PlainVAE(nn.Module):
    """The same VAE written out by hand (the peer)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 32))
        self.dec = nn.Sequential(nn.Linear(16, 512), nn.ReLU(), nn.Linear(512, 784))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (rec + kl).mean()


def time_plain(x_u8: torch.Tensor, batch: int, steps: int, warmup: int, device: torch.device, graph: bool = False) -> float:
    seed_all(0)
    model = PlainVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda", capturable=graph)
    batches = ResidentBatches(len(x_u8), batch, device)
    static_x = torch.zeros(batch, x_u8.shape[1], device=device)

    def next_batch() -> torch.Tensor:
        return torch.bernoulli(x_u8[batches.next()].float() / 255)

    def update(x: torch.Tensor) -> None:
        loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step() -> None:
        update(next_batch())

    if graph:  # PyTorch's whole-network capture: warm up on a side stream, capture, replay
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            update(static_x)

        def step() -> None:  # noqa: F811 (the captured step replaces the eager one)
            static_x.copy_(next_batch())
            captured.replay()

    return steps * batch / time_steps(step, warmup, steps, device)


def time_deepgen(ds: deepgen.Dataset, batch: int, steps: int, warmup: int, device: torch.device, compile: bool = False, graph: bool = False) -> float:
    cfg = TrainConfig(epochs=10_000, batch_size=batch, device=str(device), progress=False, tensorboard=False, log_every=100, compile=compile, cuda_graph=graph)
    seed_all(0)
    model = deepgen.create_model("vae", ds, **ARCH)
    return steps * batch / time_fit([Trainer(model, ds, cfg, None)], warmup, steps, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", default="100,1000")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--cuda-graph", action="store_true", help="also time both with the step captured in a CUDA graph (GPU only)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    ds = deepgen.load_dataset("mnist-binarized", data_dir=args.data_dir)
    x_u8 = ds.train.x.to(device).reshape(len(ds.train), -1)  # (N, 784) uint8
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        plain = time_plain(x_u8, batch, args.steps, args.warmup, device)
        eager = time_deepgen(ds, batch, args.steps, args.warmup, device, compile=False)
        row = {"batch": batch, "plain_pytorch": plain, "deepgen_eager": eager}
        if not args.no_compile:
            row["deepgen_compile"] = time_deepgen(ds, batch, args.steps, args.warmup, device, compile=True)
        if args.cuda_graph:
            row["plain_graph"] = time_plain(x_u8, batch, args.steps, args.warmup, device, graph=True)
            row["deepgen_graph"] = time_deepgen(ds, batch, args.steps, args.warmup, device, graph=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"\nsamples/s on {hw}, torch {torch.__version__}, {args.steps} timed steps")
    print("| batch | plain PyTorch (peer) | deepgen eager | ratio | deepgen compile | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        comp = r.get("deepgen_compile")
        comp_cols = f"{comp:,.0f} | {comp / r['plain_pytorch']:.2f}" if comp else "- | -"
        print(f"| {r['batch']} | {r['plain_pytorch']:,.0f} | {r['deepgen_eager']:,.0f} | {r['deepgen_eager'] / r['plain_pytorch']:.2f} | {comp_cols} |")
    if args.cuda_graph:
        print("\n| batch | plain PyTorch, CUDA graph (peer) | deepgen cuda_graph=true | ratio |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['batch']} | {r['plain_graph']:,.0f} | {r['deepgen_graph']:,.0f} | {r['deepgen_graph'] / r['plain_graph']:.2f} |")
    if args.out:
        write_record(args.out, rows, hw)


if __name__ == "__main__":
    main()
