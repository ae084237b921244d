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
  ``deepgen_compile_graph_cl`` (the same with the weights in channels-last format); with
  ``--autotune`` also ``deepgen_autotune_graph_cl`` (the same under
  ``compile_mode=max-autotune-no-cudagraphs``: minutes of compilation).

At each batch size (``--batches``, default 128 and 1024). ``flops_per_sample`` is one
training step's FLOPs per example (``torch.utils.flop_counter`` on deepgen's network,
forward + backward), so ``tflops`` = samples/s x that; ``matmul_tflops`` is the GPU's
measured bf16 ceiling in the same call (8192^3 matmuls), and ``share`` their ratio.

Sampling: 10,000 images (``--sample-n``) with 50 DDIM steps (``--sample-steps``), seconds
for the whole set in batches of ``--sample-batch``: ``eager`` (fp32), ``bf16`` (autocast),
``compile`` (the denoiser through ``torch.compile``, bf16; the compilation is a warm-up
call, not timed) and ``compile_cl`` (the same with channels-last weights). A failing configuration is recorded with its error; the others run.
``--sample-settings key=value ...`` samples another ddpm network (e.g. ``channels=32``: the
speed of a smaller network whose FID diffusion_quality.py measures; the weights are random,
which does not change the time).

``--cudnn-benchmark``: cuDNN times its convolution algorithms per shape and keeps the
fastest, for every mode of the call (diffusers' and deepgen's alike; the trainer's
``cudnn_benchmark=true``); without it both run cuDNN's heuristic choice, torch's default.

``--inductor key=value ...``: ``torch._inductor.config`` options for every compiled mode of
the call (e.g. ``layout_optimization=False``), recorded in the record's ``inductor``.

``--profile``: where the time goes. One training step of deepgen's fastest eager-launch
mode (bf16, compile, channels-last; the CUDA graph replays the same kernels but hides them
from the profiler; 20 steps in one ``fit``, so that its start and end count once; with
``--profile-sources`` 5 steps, and for the top three kernels the chains of operators that
launched them, with input shapes) at each
batch size of ``--profile-batches`` (default ``--batches``), and one compiled channels-last
sampling step at ``--sample-batch`` (not with ``--sample-modes ""``), under torch.profiler: the GPU time by kernel category (convolution,
matmul, attention, the compiled fused kernels of the norms and element-wise ops, the
optimizer, copies) and the top kernels, in the record's ``profile``.

    python benchmarks/diffusion_speed.py --data-dir .data --device cuda --out $OUT/diffusion_speed.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from timing import guarded, sync, time_steps, trainer_rate, write_record

import deepgen
from deepgen.bench import hardware
from deepgen.training import resolve_device, seed_all

SETTINGS = {"channels": 64, "channel_mult": (1, 2, 2), "res_blocks": 2, "attention": (1,), "heads": 4, "scale_shift": False, "dropout": 0.0}
TINY = {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "attention": (1,), "heads": 2, "scale_shift": False, "dropout": 0.0}


DEEPGEN_MODES = ("deepgen_eager", "deepgen_graph", "deepgen_compile", "deepgen_compile_graph", "deepgen_compile_graph_cl", "deepgen_autotune_graph_cl")


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


@contextmanager
def sampling_mode(model: deepgen.GenerativeModel, device: torch.device, mode: str):
    """Inside: ``model.denoiser`` as a sampling mode runs it (eager fp32; ``bf16`` autocast;
    ``compile`` also through torch.compile; ``compile_cl`` also with channels-last weights);
    the plain network, contiguous, after."""
    net = model.denoiser
    if mode == "compile_cl":
        net.to(memory_format=torch.channels_last)  # in place; undone below
    if mode in ("compile", "compile_cl"):
        # Forget the graphs compiled before (the training modes, the other sampling mode):
        # dynamo does not guard on a parameter's strides, so after the in-place switch to
        # channels-last it reused the contiguous graph, whose stride asserts then failed
        # (session 10: "expected size 64==64, stride 1==9").
        torch._dynamo.reset()
        model.denoiser = torch.compile(net)
    try:
        with torch.autocast(device.type, torch.bfloat16, enabled=mode != "eager"):
            yield
    finally:
        model.denoiser = net
        if mode == "compile_cl":
            net.to(memory_format=torch.contiguous_format)


def sample_seconds(model: deepgen.GenerativeModel, args, device: torch.device, mode: str) -> float:
    """Seconds for ``--sample-n`` images with ``--sample-steps`` DDIM steps (one untimed batch first)."""
    model.config = model.config.replace(sampler="ddim", steps=args.sample_steps, eta=0.0)
    with sampling_mode(model, device, mode):
        model.sample(args.sample_batch, generator=torch.Generator(device).manual_seed(0))  # warm-up (compilation)
        sync(device)
        t0 = time.perf_counter()
        left = args.sample_n
        while left > 0:
            model.sample(min(left, args.sample_batch), generator=torch.Generator(device).manual_seed(left))
            left -= args.sample_batch
        sync(device)
        return time.perf_counter() - t0


# Kernel name fragments -> category, first match wins (cuDNN / CUTLASS / cuBLAS names;
# Triton kernels first, by kernel_category).
CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "efficient_attention")),
    ("convolution", ("conv", "implicit", "winograd", "dgrad", "wgrad", "fprop", "cudnn")),
    ("matmul", ("gemm", "cutlass", "matmul", "sm90", "cublas", "nvjet")),
    ("optimizer", ("adam", "multi_tensor")),
    ("copies and fills", ("copy", "memcpy", "memset", "fill", "cat")),
)


def kernel_category(name: str) -> str:
    """The category of a kernel name. Inductor's names carry the ops they fuse
    (``triton_poi_fused_convolution_silu``: a pointwise kernel beside a convolution), so a
    Triton kernel is "compiled fused" unless it is a template (``triton_tem_``, the matmul or
    convolution itself, as max-autotune picks them)."""
    low = name.lower()
    if "triton" in low and "triton_tem" not in low:
        return "compiled fused (norms, activations, adds)"
    if "triton_tem" in low:
        return "convolution" if "conv" in low else "matmul"
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def kernels_only(prof, gpu: bool) -> list[tuple[str, float]]:
    """(kernel name, device time) from the operators' kernel lists: the fallback where the
    profiler's averages carry no device-type rows."""
    out: dict[str, float] = {}
    for e in prof.events() if gpu else []:
        for k in getattr(e, "kernels", None) or []:
            out[k.name] = out.get(k.name, 0.0) + k.duration
    return list(out.items())


def device_kernels(averages, gpu: bool) -> list[tuple[str, float]]:
    """(name, time) of the kernels in a profile's ``key_averages()`` rows: on the GPU the
    kernels' own time (device type CUDA rows; the CPU rows of the operators that launched
    them would count each kernel twice), on a CPU the operators' own CPU time. User
    annotations are left out: with CPU activity recorded, compiled graphs show as
    ``## Call CompiledFxGraph ... ##`` rows of device type CUDA spanning the kernels they
    launch (session 18's profile counted them, 67 ms a step where the kernels took 12)."""
    out = []
    for e in averages:
        if not e.key or getattr(e, "is_user_annotation", False) or (e.key.startswith("## ") and e.key.endswith(" ##")):
            continue
        if gpu and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = e.self_device_time_total if gpu else e.self_cpu_time_total
        if t > 0:
            out.append((e.key, t))
    return out


def profile_kernels(step, steps: int, device: torch.device, sources: bool = False) -> dict:
    """GPU time by kernel category and the 15 longest kernels over ``steps`` calls of
    ``step`` (already warmed up): {"ms_per_step", "by_category": {cat: share}, "top": [...]}."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"  # on a CPU (the smoke test): the operators' own CPU time
    sync(device)
    # sources: the CPU side too, to say which operator launched each top kernel (session 17:
    # with record_shapes over 20 compiled steps it outran a 110 s call; hence a flag, on fewer steps)
    sources = sources and gpu
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if sources else [ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]
    with profile(activities=acts, record_shapes=sources) as prof:
        for _ in range(steps):
            step()
        sync(device)
    kernels = device_kernels(prof.key_averages(), gpu) or kernels_only(prof, gpu)
    total = sum(t for _, t in kernels) or 1.0
    by_cat: dict[str, float] = {}
    for name, t in kernels:
        by_cat[kernel_category(name)] = by_cat.get(kernel_category(name), 0.0) + t
    top = sorted(kernels, key=lambda kv: -kv[1])[:15]
    return {"ms_per_step": total / steps / 1e3, "by_category": {k: v / total for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": k[:120], "share": t / total, "category": kernel_category(k)} for k, t in top],
            "sources": kernel_sources(prof.events(), [k for k, _ in top[:3]], total) if sources else {}}


def kernel_sources(events, names: list[str], total: float, chains: int = 6) -> dict[str, list[dict]]:
    """For each kernel of ``names``: the operators that launched it, as chains of operator
    names from the launching one outwards (``aten::copy_ < aten::contiguous <
    aten::cudnn_convolution``) with the launching one's input shapes, and the share of the
    profile's device time each chain takes (its ``chains`` largest). What a kernel's name
    alone cannot say: which layer or conversion asks for it."""
    by: dict[str, dict[str, float]] = {n: {} for n in names}
    for e in events:
        for k in getattr(e, "kernels", None) or []:
            if k.name not in by:
                continue
            chain, p = [e.name], getattr(e, "cpu_parent", None)
            while p is not None and len(chain) < 7:
                chain.append(p.name)
                p = getattr(p, "cpu_parent", None)
            key = " < ".join(chain) + f" {list(getattr(e, 'input_shapes', None) or [])[:3]}"
            by[k.name][key] = by[k.name].get(key, 0.0) + k.duration
    return {n[:120]: [{"ops": c, "share": t / total} for c, t in sorted(d.items(), key=lambda kv: -kv[1])[:chains]]
            for n, d in by.items()}


def profile_training(ds, settings: dict, batch: int, args, device: torch.device) -> dict:
    """profile_kernels of the trainer's bf16 + compile + channels-last step (no CUDA graph;
    on a CPU, the smoke test, the plain fp32 step: the machinery, not a figure)."""
    from deepgen.training import TrainConfig, Trainer

    seed_all(0)
    model = deepgen.create_model("ddpm", ds, **settings).to(memory_format=torch.channels_last)
    gpu = device.type == "cuda"
    cfg = TrainConfig(epochs=10**6, batch_size=batch, device=str(device), progress=False, tensorboard=False, log_every=100, val_limit=0,
                      ema=0.0, bf16=gpu, compile=gpu)
    trainer = Trainer(model, ds, cfg, None)
    trainer.config = cfg.replace(max_steps=args.warmup)
    trainer.fit()  # compiles and warms up

    n = 2 if args.tiny else 5 if args.profile_sources else 20

    def steps() -> None:  # one fit of n steps: its start (data checks, the resident copy) counted once, not per step
        trainer.config = cfg.replace(max_steps=trainer.step + n)
        trainer.fit()

    prof = profile_kernels(steps, 1, device, sources=args.profile_sources)
    prof["ms_per_step"] /= n
    return prof


def profile_sampling(model: deepgen.GenerativeModel, args, device: torch.device) -> dict:
    """profile_kernels of one denoiser call at ``--sample-batch`` in the ``compile_cl``
    sampling mode (on a CPU: eager, fp32)."""
    x = torch.randn(args.sample_batch, *model.spec.shape, device=device).to(memory_format=torch.channels_last)
    t = torch.full((args.sample_batch,), 500.0, device=device)
    with sampling_mode(model, device, "compile_cl" if device.type == "cuda" else "eager"), torch.no_grad():
        model.denoiser(x, t, None)  # warm-up (compilation)
        return profile_kernels(lambda: model.denoiser(x, t, None), 1 if args.tiny else 5, device)


def set_inductor(assignments: list[str]) -> dict:
    """Set ``torch._inductor.config`` options from ``key=value`` strings (Python literals:
    True, 1, "x"), for the layout experiments of the compiled modes (session 18's profile:
    the copies are layout conversions in the compiled backward's convolutions). Returns
    {key: value} as set; an unknown key or a malformed assignment is a SystemExit naming it."""
    import ast

    import torch._inductor.config as cfg

    out = {}
    for a in assignments:
        key, eq, text = a.partition("=")
        if not eq or not key:
            raise SystemExit(f"--inductor takes key=value, got {a!r}")
        if not hasattr(cfg, key):
            raise SystemExit(f"--inductor: torch._inductor.config has no option {key!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: a string option
        setattr(cfg, key, value)
        out[key] = value
    return out


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
    p.add_argument("--sample-settings", nargs="*", default=[], help="ddpm settings key=value of the sampled network (default: the benchmark's)")
    p.add_argument("--autotune", action="store_true", help="also deepgen_autotune_graph_cl: compile_mode=max-autotune-no-cudagraphs")
    p.add_argument("--profile", action="store_true", help="GPU time by kernel category of the fastest modes (see the docstring)")
    p.add_argument("--profile-batches", default=None, help="the training batch sizes --profile profiles (default: --batches)")
    p.add_argument("--profile-sources", action="store_true",
                   help="with --profile: also the operators that launched the top kernels (CPU activity and shapes; 5 steps, slower)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark for every mode, diffusers' and deepgen's (the trainer's cudnn_benchmark=true)")
    p.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE",
                   help="torch._inductor.config settings for every compiled mode of the call (e.g. layout_optimization=False)")
    p.add_argument("--tiny", action="store_true", help="tiny networks and batches (CPU smoke test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark  # process-wide: both sides alike
    inductor = set_inductor(args.inductor)
    ds = padded_mnist(args.data_dir, 256 if args.tiny else 0)
    x_u8 = ds.train.x.to(device)
    settings = TINY if args.tiny else SETTINGS
    gpu = device.type == "cuda"
    seed_all(0)
    ours = deepgen.create_model("ddpm", ds, **settings).to(device)
    record: dict = {"parameters": sum(q.numel() for q in ours.parameters()), "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                    "cudnn_benchmark": args.cudnn_benchmark, "inductor": inductor}
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
            if args.autotune:
                guarded(row, "deepgen_autotune_graph_cl", deepgen_rate, ds, settings, batch, args, device, channels_last=True,
                        bf16=True, compile=True, compile_mode="max-autotune-no-cudagraphs", cuda_graph=True)
        best = max((row[k] for k in DEEPGEN_MODES if k in row), default=0.0)
        row["speedup_vs_diffusers_fp32"] = best / row["diffusers_fp32"] if "diffusers_fp32" in row and best else None
        row["tflops"] = best * record["flops_per_sample"] / 1e12
        if gpu:
            row["share_of_matmul_ceiling"] = row["tflops"] / record["matmul_tflops"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.sample_settings:
        from deepgen.config import parse_assignments

        seed_all(0)
        ours = deepgen.create_model("ddpm", ds, deepgen.create_model("ddpm", ds, **settings).config.with_overrides(
            parse_assignments(args.sample_settings))).to(device)
    ours.eval()
    sampling: dict = {"n": args.sample_n, "steps": args.sample_steps, "batch": args.sample_batch,
                      "settings": args.sample_settings, "parameters": sum(q.numel() for q in ours.parameters())}
    modes = [m for m in args.sample_modes.split(",") if m]  # --sample-modes "": no sampling, timed or profiled
    for mode in modes:
        if mode != "eager" and not gpu:
            continue
        guarded(sampling, f"seconds_{mode}", sample_seconds, ours, args, device, mode)
    print(json.dumps(sampling), flush=True)
    record["sampling"] = sampling
    if args.profile:
        record["profile"] = {}
        jobs = [(f"train_{b}", profile_training, (ds, settings, int(b), args, device))
                for b in (args.batches if args.profile_batches is None else args.profile_batches).split(",") if b]
        if modes:
            jobs.append((f"sample_{args.sample_batch}", profile_sampling, (ours, args, device)))
        for name, fn, fn_args in jobs:
            guarded(record["profile"], name, fn, *fn_args)
            prof = record["profile"].get(name, record["profile"].get(name + "_error"))
            # Printed as each finishes: a call that runs out of time keeps what it measured.
            if isinstance(prof, dict):
                shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["by_category"].items())
                print(f"profile {name}: {prof['ms_per_step']:.2f} ms of device time per step; {shares}", flush=True)
                for k in prof["top"]:
                    print(f"  {k['share']:.1%} {k['category']}: {k['kernel']}", flush=True)
                for kernel, chains in prof.get("sources", {}).items():
                    print(f"  launched {kernel[:60]} ...:", flush=True)
                    for c in chains:
                        print(f"    {c['share']:.1%} {c['ops'][:300]}", flush=True)
            else:
                print(f"profile {name}: {prof}", flush=True)
    print(f"\nparameters: deepgen {record['parameters']:,}, diffusers {record['diffusers_parameters']:,}")
    print("| batch | diffusers fp32 | diffusers bf16 | deepgen fp32 | deepgen bf16 + graph | deepgen bf16 + compile | deepgen bf16 + compile + graph "
          "| the same, channels last | the same, autotuned | best / diffusers fp32 | TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def f(r, k):
        return f"{r[k]:,.0f}" if k in r else "failed" if k + "_error" in r else "-"

    for r in rows:
        ratio = f"{r['speedup_vs_diffusers_fp32']:.2f}x" if r.get("speedup_vs_diffusers_fp32") else "-"
        print(f"| {r['batch']} | {f(r, 'diffusers_fp32')} | {f(r, 'diffusers_bf16')} | {f(r, 'deepgen_eager')} | {f(r, 'deepgen_graph')} "
              f"| {f(r, 'deepgen_compile')} | {f(r, 'deepgen_compile_graph')} | {f(r, 'deepgen_compile_graph_cl')} "
              f"| {f(r, 'deepgen_autotune_graph_cl')} | {ratio} | {r['tflops']:.1f} |")
    if args.out:
        write_record(args.out, [record, *rows], hardware(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
