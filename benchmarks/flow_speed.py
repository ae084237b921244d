"""Training and sampling speed of RealNVP and Glow on MNIST: deepgen against normflows, same architecture and batch.

normflows (Stimper et al. 2023, ``pip install normflows``; on the GPU machine it travels
as a wheel) is built here layer for layer like deepgen's model:

* ``glow``: two levels (squeeze to 4x14x14, K steps, half the channels factored out;
  squeeze to 8x7x7, K steps); each step actnorm, an LU-parameterised invertible 1x1
  convolution and an affine channel coupling whose network is 3x3 conv -> 1x1 conv ->
  3x3 conv of ``channels`` width (normflows' ``GlowBlock``, whose ``ConvNet2d`` with
  kernels (3, 1, 3) is that network);
* ``realnvp``: two scales (RealNVP's multi-scale architecture): ``couplings``
  checkerboard couplings at 1x28x28, a squeeze, ``couplings`` channel couplings, half
  factored out, then ``couplings + 1`` checkerboard couplings at 2x14x14; the same
  network in each coupling (normflows' ``AffineCouplingBlock`` with exp scales; its
  checkerboard split needs even widths, hence two scales, not three).

Both sides get a standard-normal base for every factored-out part, Adam at lr 1e-3 and
the same batch of uniformly dequantized 8-bit MNIST, resident on the GPU. normflows is
driven as its Glow example does (``model.forward_kld(x)`` on [0, 1] data, fp32, eager:
the library has no mixed-precision or graph path); deepgen through its trainer:

* ``deepgen_eager``: fp32, no fast path (the trainer's overhead against the peer);
* ``deepgen_graph``: ``bf16=true cuda_graph=true``;
* ``deepgen_compile``: ``bf16=true compile=true``;
* ``deepgen_compile_graph``: ``bf16=true compile=true cuda_graph=true`` (the compiled step
  captured: the diffusion U-Net's fastest mode at small batches, RESULTS.md).

A configuration that fails is recorded with its error, and the others still run.
Sampling: images/s of ``model.sample(n)`` for batches of ``--sample-batch`` images under
``torch.no_grad``, both libraries eager, after one untimed batch.

    python benchmarks/flow_speed.py --data-dir .data --device cuda --out $OUT/flow_speed.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from timing import ResidentBatches, guarded, sync, time_steps, trainer_rate, write_record

import deepgen
from deepgen.bench import hardware
from deepgen.training import resolve_device, seed_all

# model -> (deepgen settings, batch)
SIZES = {
    "glow": ({"levels": 2, "steps": 16, "channels": 256}, 256),
    "realnvp": ({"scales": 2, "couplings": 4, "channels": 128}, 256),
}
TINY = {
    "glow": ({"levels": 2, "steps": 2, "channels": 8}, 8),
    "realnvp": ({"scales": 2, "couplings": 2, "channels": 8}, 8),
}


def normflows_glow(nf, steps: int, channels: int) -> torch.nn.Module:
    """normflows' Glow for 1x28x28 in deepgen's ``glow`` layout (levels=2), as normflows'
    own Glow example builds it: flows[0] is the deepest level (8x7x7), in the generative
    direction (z -> x), each level ending with the squeeze's inverse."""
    flows = [
        [nf.flows.GlowBlock(8, channels, split_mode="channel", scale=True) for _ in range(steps)] + [nf.flows.Squeeze()],
        [nf.flows.GlowBlock(4, channels, split_mode="channel", scale=True) for _ in range(steps)] + [nf.flows.Squeeze()],
    ]
    q0 = [nf.distributions.DiagGaussian((8, 7, 7), trainable=False), nf.distributions.DiagGaussian((2, 14, 14), trainable=False)]
    return nf.MultiscaleFlow(q0, flows, [nf.flows.Merge()], class_cond=False)


def normflows_realnvp(nf, couplings: int, channels: int) -> torch.nn.Module:
    """normflows' RealNVP for 1x28x28 in deepgen's ``realnvp`` layout (scales=2), in the
    generative direction: the 2x14x14 scale's checkerboard couplings, then (after the merge
    with the factored-out half) the channel couplings, the squeeze's inverse and the
    1x28x28 checkerboard couplings."""

    def coupling(c_in: int, c_out: int, split: str):
        net = nf.nets.ConvNet2d((c_in, channels, channels, c_out), (3, 1, 3), 0.0, True)
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=split)

    board = ("checkerboard", "checkerboard_inv")
    deep = [coupling(2, 4, board[i % 2]) for i in range(couplings + 1)]
    top = [coupling(2, 4, ("channel", "channel_inv")[i % 2]) for i in range(couplings)]
    top += [nf.flows.Squeeze()] + [coupling(1, 2, board[i % 2]) for i in range(couplings)]
    q0 = [nf.distributions.DiagGaussian((2, 14, 14), trainable=False), nf.distributions.DiagGaussian((2, 14, 14), trainable=False)]
    return nf.MultiscaleFlow(q0, [deep, top], [nf.flows.Merge()], class_cond=False)


def build_peer(nf, name: str, settings: dict) -> torch.nn.Module:
    if name == "glow":
        return normflows_glow(nf, settings["steps"], settings["channels"])
    return normflows_realnvp(nf, settings["couplings"], settings["channels"])


def peer_train_rate(model: torch.nn.Module, x_u8: torch.Tensor, batch: int, args, device: torch.device) -> float:
    """samples/s of normflows' training step: dequantize (Scale + Jitter, as its example),
    forward_kld, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    batches = ResidentBatches(len(x_u8), batch, device)

    def step() -> None:
        u8 = x_u8[batches.next()]
        x = (u8.float() + torch.rand(u8.shape, device=device)) / 256
        loss = model.forward_kld(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    return args.steps * batch / time_steps(step, args.warmup, args.steps, device)


def sample_rate(draw, n: int, repeats: int, device: torch.device) -> float:
    """images/s of ``draw(n)`` under no_grad, after one untimed call."""
    with torch.no_grad():
        draw(n)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            draw(n)
        sync(device)
    return repeats * n / (time.perf_counter() - t0)


def deepgen_train_rate(name: str, ds, settings: dict, batch: int, args, device: torch.device, **train) -> float:
    seed_all(0)
    return trainer_rate(deepgen.create_model(name, ds, **settings), ds, batch, args.steps, args.warmup, device, **train)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="glow,realnvp")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--sample-batch", type=int, default=1000)
    p.add_argument("--sample-repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="tiny networks and batches (CPU smoke test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import normflows as nf  # the peer: only this benchmark needs it

    device = resolve_device(args.device)
    ds = deepgen.load_dataset("mnist", data_dir=args.data_dir, max_train=512 if args.tiny else 0)
    x_u8 = ds.train.x.to(device)
    if x_u8.dtype != torch.uint8:
        x_u8 = (x_u8 * 255).round().to(torch.uint8)
    sizes = TINY if args.tiny else SIZES
    gpu = device.type == "cuda"
    rows = []
    for name in args.models.split(","):
        settings, batch = sizes[name]
        row: dict = {"model": name, "settings": settings, "batch": batch, "normflows": nf.__version__}
        seed_all(0)
        ours = deepgen.create_model(name, ds, **settings).to(device)
        seed_all(0)
        peer = build_peer(nf, name, settings).to(device)
        row["parameters"] = sum(q.numel() for q in ours.parameters())
        row["normflows_parameters"] = sum(q.numel() for q in peer.parameters())
        guarded(row, "normflows_train", peer_train_rate, peer, x_u8, batch, args, device)
        guarded(row, "deepgen_eager", deepgen_train_rate, name, ds, settings, batch, args, device)
        if gpu:
            guarded(row, "deepgen_graph", deepgen_train_rate, name, ds, settings, batch, args, device, bf16=True, cuda_graph=True)
            guarded(row, "deepgen_compile", deepgen_train_rate, name, ds, settings, batch, args, device, bf16=True, compile=True)
            guarded(row, "deepgen_compile_graph", deepgen_train_rate, name, ds, settings, batch, args, device, bf16=True, compile=True,
                    cuda_graph=True)
        ours.eval()
        peer.eval()
        n, reps = (16, 1) if args.tiny else (args.sample_batch, args.sample_repeats)
        guarded(row, "normflows_sample", sample_rate, peer.sample, n, reps, device)
        guarded(row, "deepgen_sample", sample_rate, ours.sample, n, reps, device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| model | normflows train | deepgen fp32 | deepgen bf16 + graph | deepgen bf16 + compile | deepgen bf16 + compile + graph "
          "| best / normflows | normflows sample | deepgen sample |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def f(r, k):
        return f"{r[k]:,.0f}" if k in r else "failed" if k + "_error" in r else "-"

    for r in rows:
        best = max((r[k] for k in ("deepgen_eager", "deepgen_graph", "deepgen_compile", "deepgen_compile_graph") if k in r), default=None)
        ratio = f"{best / r['normflows_train']:.2f}x" if best and "normflows_train" in r else "-"
        print(f"| {r['model']} | {f(r, 'normflows_train')} | {f(r, 'deepgen_eager')} | {f(r, 'deepgen_graph')} | {f(r, 'deepgen_compile')} "
              f"| {f(r, 'deepgen_compile_graph')} | {ratio} "
              f"| {f(r, 'normflows_sample')} | {f(r, 'deepgen_sample')} |")
    if args.out:
        write_record(args.out, rows, hardware(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
