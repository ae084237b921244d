"""Diffusion training and sampling speed: deepgen's ddpm against diffusers' UNet2DModel + DDPMScheduler, same network and batch.

The network: BENCHMARKS.md's diffusers configuration, a UNet2DModel with blocks 64-128-128,
two layers per block and attention at the middle level, on MNIST padded to 32x32
(6,469,889 parameters), against deepgen's U-Net with ``channels=64 channel_mult=(1,2,2)
res_blocks=2 attention=(1,) scale_shift=false`` (DDPM's additive time embedding, as
diffusers' default): the same parameter count, printed by the script.

Training, samples/s over ``--steps`` timed steps after ``--warmup`` (the data resident on
the GPU on both sides, Adam, the epsilon objective at uniform t):

* ``diffusers_fp32`` and ``diffusers_bf16``: the loop of diffusers' train_unconditional
  example (``noise_scheduler.add_noise``, ``unet(x_t, t).sample``, MSE), eager, fp32 or
  under bf16 autocast;
* ``deepgen_eager`` (fp32, the trainer without fast paths), ``deepgen_graph``
  (``bf16=true cuda_graph=true``), ``deepgen_compile`` (``bf16=true compile=true``),
  ``deepgen_compile_graph`` (both: the compiled step captured) and
  ``deepgen_compile_graph_cl`` (the same with the weights in channels-last format).

At each batch size (``--batches``, default 128 and 1024). ``flops_per_sample`` is one
training step's FLOPs per example (``torch.utils.flop_counter`` on deepgen's network,
forward + backward), so ``tflops`` = samples/s x that; ``matmul_tflops`` is the GPU's
measured bf16 ceiling in the same call (8192^3 matmuls), and ``share`` their ratio.

Sampling: 10,000 images (``--sample-n``) with 50 DDIM steps (``--sample-steps``), seconds
for the whole set in batches of ``--sample-batch``: ``eager`` (fp32), ``bf16`` (autocast),
``compile`` (the denoiser through ``torch.compile``, bf16; the compilation is a warm-up
call, not timed) and ``compile_cl`` (the same with channels-last weights). A failing configuration is recorded with its error; the others run.

    python benchmarks/diffusion_speed.py --data-dir .data --device cuda --out $OUT/diffusion_speed.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from timing import guarded, sync, time_steps, trainer_rate, write_record

import deepgen
from deepgen.bench import hardware
from deepgen.training import resolve_device, seed_all

SETTINGS = {"channels": 64, "channel_mult": (1, 2, 2), "res_blocks": 2, "attention": (1,), "heads": 4, "scale_shift": False, "dropout": 0.0}
TINY = {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "attention": (1,), "heads": 2, "scale_shift": False, "dropout": 0.0}


DEEPGEN_MODES = ("deepgen_eager", "deepgen_graph", "deepgen_compile", "deepgen_compile_graph", "deepgen_compile_graph_cl")


def padded_mnist(data_dir: str | None, limit: int) -> deepgen.Dataset:
    """MNIST's training images padded to 32x32 (uint8), as diffusers' MNIST examples use."""
    mnist = deepgen.load_dataset("mnist", data_dir=data_dir, max_train=limit)
    x = mnist.train.x.numpy()
    x = x.reshape(len(x), 28, 28) if x.ndim != 4 else x[:, 0]
    x = np.pad(x if x.dtype == np.uint8 else (x * 255).round().astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
    return deepgen.load_dataset({"x": x[:, None], "y": mnist.train.y.numpy()})


def diffusers_unet(tiny: bool):
    from diffusers import UNet2DModel

    s = TINY if tiny else SETTINGS
    widths = tuple(s["channels"] * m for m in s["channel_mult"])
    down = tuple("AttnDownBlock2D" if i in s["attention"] else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if len(widths) - 1 - i in s["attention"] else "UpBlock2D" for i in range(len(widths)))
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=s["res_blocks"], block_out_channels=widths,
                       down_block_types=down, up_block_types=up, attention_head_dim=widths[min(s["attention"])] // s["heads"],
                       norm_num_groups=min(32, widths[0]))


def diffusers_rate(x_u8: torch.Tensor, batch: int, args, device: torch.device, bf16: bool) -> float:
    """samples/s of diffusers' train_unconditional loop on data resident on the device."""
    from diffusers import DDPMScheduler

    seed_all(0)
    unet = diffusers_unet(args.tiny).to(device).train()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-4, fused=device.type == "cuda")
    n = len(x_u8)

    def step() -> None:
        idx = torch.randint(0, n, (batch,), device=device)
        x0 = x_u8[idx].float() / 127.5 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        xt = sched.add_noise(x0, noise, t)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            pred = unet(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return args.steps * batch / time_steps(step, args.warmup, args.steps, device)


def deepgen_rate(ds, settings: dict, batch: int, args, device: torch.device, channels_last: bool = False, **train) -> float:
    """samples/s of deepgen's trainer on a fresh ddpm (no EMA: diffusers' loop keeps none);
    ``channels_last``: the network's weights in channels-last memory format (the
    convolutions then run, and hand on, NHWC activations)."""
    seed_all(0)
    model = deepgen.create_model("ddpm", ds, **settings)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return trainer_rate(model, ds, batch, args.steps, args.warmup, device, ema=0.0, **train)


def flops_per_sample(model: deepgen.GenerativeModel, batch_shape: tuple[int, ...]) -> float:
    """FLOPs of one forward + backward of the denoiser per example (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(4, *batch_shape, device=model.device)
    t = torch.randint(0, 1000, (4,), device=model.device).float()
    with FlopCounterMode(display=False) as counter:
        model.denoiser(x, t, None).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 4


def matmul_tflops(device: torch.device, size: int = 8192, reps: int = 20) -> float:
    """The measured bf16 matmul throughput (TFLOP/s) of this GPU: the ceiling for the share."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = time_steps(lambda: a @ b, 3, reps, device)
    return 2 * size**3 * reps / seconds / 1e12


def sample_seconds(model: deepgen.GenerativeModel, args, device: torch.device, mode: str) -> float:
    """Seconds for ``--sample-n`` images with ``--sample-steps`` DDIM steps (one untimed batch first)."""
    model.config = model.config.replace(sampler="ddim", steps=args.sample_steps, eta=0.0)
    net = model.denoiser
    if mode == "compile_cl":
        net.to(memory_format=torch.channels_last)  # in place; undone below
    if mode in ("compile", "compile_cl"):
        model.denoiser = torch.compile(net)
    try:
        with torch.autocast(device.type, torch.bfloat16, enabled=mode != "eager"):
            model.sample(args.sample_batch, generator=torch.Generator(device).manual_seed(0))  # warm-up (compilation)
            sync(device)
            t0 = time.perf_counter()
            left = args.sample_n
            while left > 0:
                model.sample(min(left, args.sample_batch), generator=torch.Generator(device).manual_seed(left))
                left -= args.sample_batch
            sync(device)
            return time.perf_counter() - t0
    finally:
        model.denoiser = net
        if mode == "compile_cl":
            net.to(memory_format=torch.contiguous_format)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--sample-n", type=int, default=10_000)
    p.add_argument("--sample-batch", type=int, default=10_000)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-modes", default="eager,bf16,compile,compile_cl")
    p.add_argument("--tiny", action="store_true", help="tiny networks and batches (CPU smoke test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    ds = padded_mnist(args.data_dir, 256 if args.tiny else 0)
    x_u8 = ds.train.x.to(device)
    settings = TINY if args.tiny else SETTINGS
    gpu = device.type == "cuda"
    seed_all(0)
    ours = deepgen.create_model("ddpm", ds, **settings).to(device)
    record: dict = {"parameters": sum(q.numel() for q in ours.parameters()), "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}
    record["diffusers_parameters"] = sum(q.numel() for q in diffusers_unet(args.tiny).parameters())
    record["flops_per_sample"] = flops_per_sample(ours, ds.spec.shape)
    if gpu:
        record["matmul_tflops"] = matmul_tflops(device)
    rows = []
    for batch in (int(b) for b in args.batches.split(",") if b):  # --batches "": sampling only
        row: dict = {"batch": batch}
        guarded(row, "diffusers_fp32", diffusers_rate, x_u8, batch, args, device, False)
        guarded(row, "diffusers_bf16", diffusers_rate, x_u8, batch, args, device, True)

        guarded(row, "deepgen_eager", deepgen_rate, ds, settings, batch, args, device)
        if gpu:
            guarded(row, "deepgen_graph", deepgen_rate, ds, settings, batch, args, device, bf16=True, cuda_graph=True)
            guarded(row, "deepgen_compile", deepgen_rate, ds, settings, batch, args, device, bf16=True, compile=True)
            guarded(row, "deepgen_compile_graph", deepgen_rate, ds, settings, batch, args, device, bf16=True, compile=True, cuda_graph=True)
            guarded(row, "deepgen_compile_graph_cl", deepgen_rate, ds, settings, batch, args, device, channels_last=True,
                    bf16=True, compile=True, cuda_graph=True)
        best = max((row[k] for k in DEEPGEN_MODES if k in row), default=0.0)
        row["speedup_vs_diffusers_fp32"] = best / row["diffusers_fp32"] if "diffusers_fp32" in row and best else None
        row["tflops"] = best * record["flops_per_sample"] / 1e12
        if gpu:
            row["share_of_matmul_ceiling"] = row["tflops"] / record["matmul_tflops"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    ours.eval()
    sampling: dict = {"n": args.sample_n, "steps": args.sample_steps, "batch": args.sample_batch}
    for mode in args.sample_modes.split(","):
        if mode != "eager" and not gpu:
            continue
        guarded(sampling, f"seconds_{mode}", sample_seconds, ours, args, device, mode)
    print(json.dumps(sampling), flush=True)
    record["sampling"] = sampling
    print(f"\nparameters: deepgen {record['parameters']:,}, diffusers {record['diffusers_parameters']:,}")
    print("| batch | diffusers fp32 | diffusers bf16 | deepgen fp32 | deepgen bf16 + graph | deepgen bf16 + compile | deepgen bf16 + compile + graph "
          "| the same, channels last | best / diffusers fp32 | TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def f(r, k):
        return f"{r[k]:,.0f}" if k in r else "failed" if k + "_error" in r else "-"

    for r in rows:
        ratio = f"{r['speedup_vs_diffusers_fp32']:.2f}x" if r.get("speedup_vs_diffusers_fp32") else "-"
        print(f"| {r['batch']} | {f(r, 'diffusers_fp32')} | {f(r, 'diffusers_bf16')} | {f(r, 'deepgen_eager')} | {f(r, 'deepgen_graph')} "
              f"| {f(r, 'deepgen_compile')} | {f(r, 'deepgen_compile_graph')} | {f(r, 'deepgen_compile_graph_cl')} | {ratio} | {r['tflops']:.1f} |")
    if args.out:
        write_record(args.out, [record, *rows], hardware(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
