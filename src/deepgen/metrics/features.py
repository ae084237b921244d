"""deepgen's own feature networks for sample-quality metrics (FID, KID, precision/recall).

FID compares the Gaussian statistics of two sets of features taken from the penultimate
layer of a classifier (Heusel et al. 2017 used Inception-v3's 2048-d pool3 features);
KID (Binkowski et al. 2018), improved precision/recall (Kynkaanniemi et al. 2019) and
density/coverage (Naeem et al. 2020) work on the same kind of embedding. Inception was
trained on 299x299 ImageNet photographs and has to be downloaded; for 28x28 grey images
it is neither fitting nor offline. deepgen therefore trains its own small networks, once,
and caches them:

* :func:`train_classifier`: a small CNN for 1x28x28 digits and clothes (``mnist``,
  ``fashion-mnist``; ``mnist-binarized`` shares the MNIST one). Features are its 128-d
  penultimate activations (post-ReLU, like Inception's pool3).
* :func:`autoencoder_features`: for any other dataset (``frey-faces``, ``digits``, user
  folders, tables): the 32-d codes of a deepgen ``ae`` trained on it. An autoencoder
  knows nothing about classes, so these features say less about semantics; the returned
  object says so in :meth:`FeatureNet.describe`, which the evaluator prints beside every
  FID.
* :func:`feature_extractor`: picks one of the two, loading it from the cache folder or
  training and storing it; :func:`mnist_classifier` is the one MNIST classifier, also
  used to label the three channels of stacked MNIST (Srivastava et al. 2017, VEEGAN;
  Lin et al. 2018, PacGAN).

Figures computed with these features are comparable between deepgen models and peers
run through the same evaluator, never with published Inception FIDs (BENCHMARKS.md).

Cache files (default folder ``$XDG_CACHE_HOME/deepgen/features``, else
``~/.cache/deepgen/features``): ``<name>-<sha12>-seed<seed>.safetensors`` holds the
weights, with every fact needed to trust them (data checksum, seed, architecture,
training recipe) in its metadata, and ``<name>-<sha12>-seed<seed>.json`` repeats those
facts for people (accuracy, torch version, date). ``sha12`` is the start of the SHA-256
of the training data (raw bytes, labels included). A file whose facts do not match the
current data, architecture or recipe, or that cannot be read, is retrained with a
warning, never trusted and never a crash. Loading reads safetensors and JSON only.

Layout: the networks (:class:`DigitCNN`, :class:`FeatureNet`) are plain modules in
:mod:`deepgen.metrics.feature_nets`, re-exported here; this module holds the recipes,
the training and the cache. Training uses the bottom layer's optimizer and lr schedule
(:mod:`deepgen.optim`) and the data layer's loaders, never ``deepgen.training`` (which
sits beside ``metrics/``, not below it); files go through :mod:`deepgen.io`.

Progress: every entry point takes ``progress`` (True, False, or None = on when stderr is
a terminal): a tqdm bar of the training steps while a network is trained on first use.
The bar counts steps on the host; it never reads the loss, so it adds no host
synchronisation to a step.

Determinism: training is seeded (weights, data order, augmentation, dropout) without
touching the caller's global RNG; on the CPU two trainings with the same seed, torch
build and thread count give identical weights.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data import DataConfig, Dataset, ResidentLoader, iterate, load_dataset, make_loader
from ..data.dataset import Split, replace_splits
from ..data.files import cache_dir as data_cache_dir
from ..devices import resolve_device
from ..errors import TrainingDiverged, UserError
from ..io import read_tensors, save_tensors, tensor_metadata, write_json
from ..optim import OptimizerSpec, build_optimizer, schedule_factor, set_lr
from ..version import __version__
from .feature_nets import (
    FEATURE_DIM,
    CNNArchitecture,
    DigitCNN,
    FeatureNet,
    Kind,
    _AECodes,
    _display,
)

# The networks, re-exported: callers import them from here (deepgen.metrics.features.*).
from .progress import progress_bar, resolve_progress

if TYPE_CHECKING:
    from ..models.base import GenerativeModel

log = logging.getLogger(__name__)

AE_LATENT_DIM = 32  # autoencoder features: the code size
FORMAT = "deepgen-features"
FORMAT_VERSION = 1
_META_KEY = "deepgen_features"  # the safetensors metadata entry holding the facts (JSON)
QUICK_TEST = 1000  # test images that score a quick (max_train > 0) classifier

# -- 1. recipes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierRecipe:
    """How to train one classifier. Changing any field retrains cached copies."""

    data: str  # the dataset whose train split it learns (mnist-binarized -> mnist)
    epochs: int = 5
    batch_size: int = 128  # on two CPU cores 128 is faster per image than 256
    lr: float = 2e-3  # Adam's peak learning rate; cosine decay after a short warm-up
    warmup: float = 0.1  # fraction of the steps with a linear warm-up
    shift: int = 2  # random translation by up to this many pixels (LeCun-style augmentation)
    hflip: bool = False  # random horizontal flips (clothes are symmetric; digits are not)
    binarize: float = 0.0  # fraction of training images Bernoulli-binarized (binary-model samples)
    target: float = 0.99  # the test accuracy the recipe is meant to reach; a shortfall warns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, ClassifierRecipe] = {
    # One MNIST classifier serves mnist, mnist-binarized and stacked-MNIST labelling. A
    # quarter of its training images are binarized so that it is at home on the {0, 1}
    # samples of models trained on binarized MNIST as well as on grey levels.
    "mnist": ClassifierRecipe(data="mnist", epochs=4, binarize=0.25, target=0.99),
    # Horizontal flips cost Fashion-MNIST accuracy here (91.5% -> 90.9% at 8 epochs on a GPU).
    "fashion-mnist": ClassifierRecipe(data="fashion-mnist", epochs=8, target=0.90),
}
RECIPES["mnist-binarized"] = RECIPES["mnist"]


@dataclass(frozen=True)
class AERecipe:
    """How to train the autoencoder behind :func:`autoencoder_features`."""

    latent_dim: int = AE_LATENT_DIM
    steps: int = 3000  # optimizer steps (whole epochs, rounded up) ...
    max_epochs: int = 50  # ... but at most this many epochs
    batch_size: int = 128
    lr: float = 1e-3

    def epochs_for(self, num_train: int) -> int:
        per_epoch = max(1, num_train // self.batch_size)
        return max(1, min(self.max_epochs, math.ceil(self.steps / per_epoch)))


# -- 2. helpers ----------------------------------------------------------------------------


def data_sha256(split: Split) -> str:
    """SHA-256 (hex) of a split's raw training data: dtype, shape, bytes of x, then of y
    (for a streamed image folder, ``x``'s fingerprint: each file's path, size and mtime).

    (N, ...) uint8 MNIST train images plus (N,) int64 labels: 47 MB, about 0.05 s.
    """
    h = hashlib.sha256()
    for t in (split.x, split.y):
        if t is None:
            h.update(b"none;")
            continue
        if not isinstance(t, torch.Tensor):  # files read batch by batch: their paths, sizes, times
            h.update(t.fingerprint())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype};{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().reshape(-1) if t.numel() else b"")
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/deepgen/features`` or ``~/.cache/deepgen/features``."""
    return data_cache_dir().parent / "features"


def _slug(name: str) -> str:
    """A file-name-safe short name: a path's last part, other characters -> '_'."""
    base = Path(name).name if ("/" in name or "\\" in name) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "data"


def _device(device: str | torch.device) -> torch.device:
    """The device a feature network is trained and run on (``auto``, ``cpu``, ``cuda:N``...)."""
    return resolve_device(device)


def _fork_rng(device: torch.device):
    """Seeded work inside leaves the caller's global RNG streams untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-shift, shift], zero fill.

    x (N, C, H, W) -> (N, C, H, W): pad by ``shift``, then gather one HxW window per image.
    """
    if shift <= 0:
        return x
    n, c, h, w = x.shape
    wp = w + 2 * shift
    padded = F.pad(x, (shift, shift, shift, shift)).flatten(2)  # (N, C, (H+2s)(W+2s))
    dy = torch.randint(0, 2 * shift + 1, (n, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * shift + 1, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy  # (N, H, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx  # (N, 1, W)
    idx = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, idx).view(n, c, h, w)


def _augment(x: torch.Tensor, recipe: ClassifierRecipe, generator: torch.Generator) -> torch.Tensor:
    """Training-time augmentation of a batch in [0, 1]: shifts, flips, binarization."""
    x = random_shift(x, recipe.shift, generator)
    n = len(x)
    if recipe.hflip:
        flip = torch.rand(n, 1, 1, 1, generator=generator, device=x.device) < 0.5
        x = torch.where(flip, x.flip(3), x)
    if recipe.binarize > 0:
        which = torch.rand(n, 1, 1, 1, generator=generator, device=x.device) < recipe.binarize
        x = torch.where(which, torch.bernoulli(x, generator=generator), x)
    return x


@torch.no_grad()
def _accuracy(net: DigitCNN, ds: Dataset, device: torch.device, limit: int = 0, binarize_seed: int | None = None) -> float:
    """Accuracy in [0, 1] on the first ``limit`` test images (0 = all); with
    ``binarize_seed``, of Bernoulli-binarized test images."""
    gen = None if binarize_seed is None else torch.Generator(device).manual_seed(binarize_seed)
    correct = total = 0
    for batch in iterate(ds, "test", 1000, device, limit=limit):
        x = batch.x if gen is None else torch.bernoulli(batch.x, generator=gen)
        correct += (net(x).argmax(1) == batch.y).sum()
        total += len(x)
    return float(correct) / max(total, 1)


def _load_data(name: str, data_dir: str | None, max_train: int) -> Dataset:
    return load_dataset(DataConfig(name=name, data_dir=data_dir, max_train=max_train))


# -- 3. training ---------------------------------------------------------------------------


def train_classifier(
    dataset_name: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    epochs: int | None = None,
    max_train: int = 0,
    progress: bool | None = None,
) -> FeatureNet:
    """Train deepgen's classifier for ``dataset_name`` and return it as a :class:`FeatureNet`.

    Accepted names: ``mnist``, ``mnist-binarized`` (trains the MNIST classifier), and
    ``fashion-mnist``. Adam with a cosine learning-rate decay on the train split, pixels in
    [0, 1], random shifts of up to 2 pixels (see :data:`RECIPES`), then the test accuracy.
    ``epochs`` overrides the recipe's; ``max_train`` > 0 keeps the first N training
    images and scores the first 1000 test images (quick runs and tests). Deterministic from ``seed`` on the CPU. On two CPU
    cores the MNIST recipe takes about a minute; on a GPU a few seconds.
    """
    if dataset_name not in RECIPES:
        raise UserError(
            f"no classifier recipe for dataset {dataset_name!r}. Accepted: {', '.join(sorted(RECIPES))}. "
            f"Other datasets get autoencoder features (feature_extractor / autoencoder_features)."
        )
    recipe = RECIPES[dataset_name]
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"epochs must be >= 1, got {epochs}")
        recipe = ClassifierRecipe(**{**recipe.to_dict(), "epochs": epochs})
    if max_train < 0:
        raise UserError(f"max_train must be >= 0 (0 = all), got {max_train}")
    ds = _load_data(recipe.data, data_dir, max_train)
    return _train_classifier(ds, recipe, seed, _device(device), max_train, data_sha256(ds.train), progress=resolve_progress(progress))


@torch.enable_grad()  # first use may come from the evaluator, which runs without gradients
def _train_classifier(
    ds: Dataset,
    recipe: ClassifierRecipe,
    seed: int,
    device: torch.device,
    max_train: int,
    sha: str,
    arch: CNNArchitecture | None = None,
    progress: bool = False,
) -> FeatureNet:
    arch = arch or CNNArchitecture()
    if tuple(ds.spec.shape) != arch.input_shape or ds.train.y is None:
        raise UserError(f"the classifier needs labelled 1x28x28 images; {ds.name!r} has shape {ds.spec.shape}.")
    start = time.perf_counter()
    # Channels-last convolutions are about 2x faster on CPUs (oneDNN) and on GPUs.
    fmt = torch.channels_last
    with _fork_rng(device):
        torch.manual_seed(seed)  # weights and dropout
        net = DigitCNN(arch).to(device, memory_format=fmt)
        loader = ResidentLoader(ds, recipe.batch_size, device, seed=seed)  # data order
        aug_gen = torch.Generator(device).manual_seed(seed + 2)  # shifts, flips, binarization
        steps = recipe.epochs * loader.steps_per_epoch
        warm = max(1, round(recipe.warmup * steps))  # at least one warm-up step, even for tiny runs
        # Adam (fused on CUDA, foreach elsewhere), betas (0.9, 0.999), eps 1e-8, no decay.
        opt = build_optimizer(OptimizerSpec(name="adam", lr=recipe.lr), list(net.parameters()), device)
        net.train()
        desc = f"training the {_display(recipe.data)} feature classifier (once)"
        with progress_bar(steps, desc, enabled=progress, unit="step") as bar:
            for step in range(steps):
                # Linear warm-up over `warm` steps, then cosine decay to 0 at `steps`.
                set_lr(opt, recipe.lr * schedule_factor("cosine", warm, step, steps))
                batch = loader.next()
                x = _augment(batch.x, recipe, aug_gen).contiguous(memory_format=fmt)
                loss = F.cross_entropy(net(x), batch.y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)  # a host count; the loss is read once, after the loop
                if (step + 1) % loader.steps_per_epoch == 0:
                    bar.set_postfix_str(f"epoch {(step + 1) // loader.steps_per_epoch}/{recipe.epochs}", refresh=False)
        net.eval()
        # A quick run (max_train > 0) is scored on the first 1000 test images only.
        limit = QUICK_TEST if max_train else 0
        accuracy = _accuracy(net, ds, device, limit)
        info: dict[str, Any] = {"num_test": len(ds.test) if not limit else min(limit, len(ds.test))}
        if recipe.binarize > 0:
            info["accuracy_binarized"] = _accuracy(net, ds, device, limit, binarize_seed=seed)
    last_loss = float(loss.detach())
    if not math.isfinite(last_loss):
        raise UserError(f"training the {ds.name} classifier diverged (loss {last_loss}); try another seed.")
    seconds = time.perf_counter() - start
    info.update(
        num_classes=ds.spec.num_classes,
        recipe=recipe.to_dict(),
        architecture=arch.to_dict(),
        max_train=max_train,
        num_train=len(ds.train),
        train_seconds=round(seconds, 2),
        train_device=str(device),
        torch_threads=torch.get_num_threads(),
    )
    log.info("trained the %s classifier in %.1f s: test accuracy %.4f", ds.name, seconds, accuracy)
    if max_train == 0 and _is_stock(recipe) and accuracy < recipe.target:
        warnings.warn(
            f"the {_display(recipe.data)} classifier reached test accuracy {accuracy:.4f}, below the "
            f"recipe's target {recipe.target}; its features are weaker than intended.",
            stacklevel=3,
        )
    return FeatureNet(
        net,
        name=recipe.data,
        kind="classifier",
        input_shape=arch.input_shape,
        feature_dim=arch.feature_dim,
        accuracy=accuracy,
        data_sha256=sha,
        seed=seed,
        info=info,
    )


def _is_stock(recipe: ClassifierRecipe) -> bool:
    """True for an unmodified recipe of :data:`RECIPES` (its target accuracy applies)."""
    return any(r == recipe for r in RECIPES.values())


def _fit(
    model: GenerativeModel, ds: Dataset, epochs: int, batch_size: int, seed: int, device: torch.device, progress: bool = False
) -> float:
    """Train ``model`` on ``ds``'s train split for ``epochs`` epochs; the last loss.

    The model contract's plain loop, as the trainer runs it with its defaults (constant
    lr, no warm-up, EMA, clipping, bf16, compile or CUDA graphs): each step draws one
    batch and runs the phases active in this epoch in order, each ``repeats`` optimizer
    steps (a fresh batch per repeat with ``new_batch``), then its ``after_step`` hook.
    Batches come from the trainer's loader (:func:`~deepgen.data.make_loader`, seeded
    with ``seed``) and the model's own noise from torch's global generator seeded with
    ``seed + 1``, as the trainer seeds them, so the weights are the ones
    ``Trainer(model, ds, TrainConfig(epochs, batch_size, seed)).fit()`` gave before this
    loop replaced it. The whole model's gradients are cleared before each backward, as
    in the trainer, so a phase never steps on gradients left by another phase's
    backward. It lives here because ``metrics/`` may not import ``training/``.
    ``progress``: a bar of the batches drawn (a host count, no sync).
    """
    model.to(device)
    phases = model.phases()
    # The phase's groups: one torch param group each, with its weight decay.
    opts = [build_optimizer(p.optimizer, p.groups, device) for p in phases]
    loader = make_loader(ds, batch_size, device, seed=seed)  # the data order
    torch.manual_seed(seed + 1)  # the model's noise (the weights were seeded by the caller)
    model.train()
    loss = torch.zeros((), device=device)
    desc = f"training the {ds.name} feature autoencoder (once)"
    with progress_bar(epochs * loader.steps_per_epoch, desc, enabled=progress, unit="batch") as bar:
        while loader.epochs_done < epochs:
            epoch = loader.epochs_done  # the epoch this step's batches come from
            batch = loader.next()
            drawn = 1
            for phase, opt in zip(phases, opts):
                if not phase.active(epoch):
                    continue
                for r in range(phase.repeats):
                    if r > 0 and phase.new_batch:
                        batch = loader.next()
                        drawn += 1
                    loss = model.loss(batch, phase.name).loss
                    model.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if phase.after_step is not None:
                        phase.after_step()
            bar.update(drawn)  # batches drawn: a host count, no sync
    model.eval()
    last = float(loss.detach())  # one host sync, at the end
    if not math.isfinite(last) or not all(bool(p.isfinite().all()) for p in model.parameters()):
        raise TrainingDiverged(f"training the {ds.name} feature autoencoder diverged (loss {last}); try another seed.")
    return last


@torch.enable_grad()  # first use may come from the evaluator, which runs without gradients
def _train_autoencoder(
    ds: Dataset,
    recipe: AERecipe,
    seed: int,
    device: torch.device,
    epochs: int | None,
    max_train: int,
    sha: str,
    progress: bool = False,
) -> FeatureNet:
    from ..models import create_model

    network = "conv" if ds.spec.is_image else "mlp"
    n_epochs = epochs if epochs is not None else recipe.epochs_for(len(ds.train))
    start = time.perf_counter()
    with _fork_rng(device):
        torch.manual_seed(seed)  # the weights (_fit seeds the noise and data order)
        ae = create_model("ae", ds, network=network, latent_dim=recipe.latent_dim, lr=recipe.lr)
        _fit(ae, ds, n_epochs, recipe.batch_size, seed, device, progress=progress)
    ae.eval()
    with torch.no_grad():
        sq = n = 0.0
        for batch in iterate(ds, "test", 500, device):
            sq += float((ae.reconstruct(batch.x) - batch.x).pow(2).sum())
            n += batch.x.numel()
    seconds = time.perf_counter() - start
    info = {
        "num_classes": ds.spec.num_classes,
        "recipe": {**asdict(recipe), "epochs": n_epochs, "network": network},
        "architecture": {"name": "deepgen-ae", "model_config": ae.config.to_dict(), "spec": ds.spec.to_dict()},
        "test_recon_mse": sq / max(n, 1),
        "max_train": max_train,
        "num_train": len(ds.train),
        "train_seconds": round(seconds, 2),
        "train_device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    log.info("trained the %s autoencoder features in %.1f s", ds.name, seconds)
    return FeatureNet(
        _AECodes(ae),
        name=ds.name,
        kind="autoencoder",
        input_shape=tuple(ds.spec.shape),
        feature_dim=recipe.latent_dim,
        accuracy=None,
        data_sha256=sha,
        seed=seed,
        info=info,
    )


# -- 4. the cache --------------------------------------------------------------------------


def _facts(net: FeatureNet) -> dict[str, Any]:
    """Everything stored beside the weights (JSON-able)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": net.name,
        "kind": net.kind,
        "description": net.describe(),
        "accuracy": net.accuracy,
        "data_sha256": net.data_sha256,
        "seed": net.seed,
        "feature_dim": net.feature_dim,
        "input_shape": list(net.input_shape),
        "torch_version": torch.__version__,
        "deepgen_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **net.info,
    }


def _store(net: FeatureNet, stem: Path) -> None:
    """Write ``stem.safetensors`` (weights + facts) and ``stem.json`` (facts), atomically."""
    facts = _facts(net)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(stem.with_suffix(".safetensors"), net.state_dict(), metadata={_META_KEY: json.dumps(facts)})
        write_json(stem.with_suffix(".json"), facts)
    except OSError as e:
        warnings.warn(f"could not cache the {net.name} features in {stem.parent} ({e}); they will be retrained next time.", stacklevel=3)


def _read_facts(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(facts, tensors) of a cache file; ValueError when it is unreadable or not ours."""
    try:
        meta = tensor_metadata(path)
        tensors = read_tensors(path)
    except (UserError, RuntimeError) as e:  # UserError: deepgen.io's "missing or corrupt"
        raise ValueError(f"unreadable ({e})") from None
    try:
        facts = json.loads(meta[_META_KEY])
    except (KeyError, json.JSONDecodeError, TypeError):
        raise ValueError("no deepgen feature metadata") from None
    if not isinstance(facts, dict) or facts.get("format") != FORMAT:
        raise ValueError("not a deepgen feature file")
    return facts, tensors


def _mismatch(facts: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The first stored fact that differs from what is wanted, as a phrase; else None."""
    for key, value in want.items():
        if facts.get(key) != value:
            if key == "data_sha256":
                return f"it was trained on other data (sha256 {str(facts.get(key))[:12]}..., the data now has {value[:12]}...)"
            old = facts.get(key)
            if isinstance(old, dict) and isinstance(value, dict):  # name the fields that changed
                diff = sorted(k for k in old.keys() | value.keys() if old.get(k) != value.get(k))
                return f"its {key} differs in {', '.join(diff)} ({', '.join(f'{k}={old.get(k)!r}, now {value.get(k)!r}' for k in diff)})"
            return f"its {key} is {old!r}, now {value!r}"
    return None


def _load_cached(
    stem: Path, want: dict[str, Any], build: Callable[[dict[str, Any]], FeatureNet], device: torch.device
) -> FeatureNet | None:
    """The cached network at ``stem`` if it is readable and its facts match ``want``; else None
    (with a warning saying why it will be retrained)."""
    path = stem.with_suffix(".safetensors")
    if not path.is_file():
        return None
    try:
        facts, tensors = _read_facts(path)
        bad = _mismatch(facts, want)
        if bad is None:
            with torch.random.fork_rng(devices=[]):  # building draws initial weights; keep the caller's RNG
                net = build(facts)
            net.load_state_dict(tensors)
            return net.to(device)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:  # corrupt, foreign, wrong shapes
        bad = f"it cannot be read ({e})"
    warnings.warn(f"cached features {path} are not used: {bad}. Retraining.", stacklevel=4)
    return None


def _warn_other_data(folder: Path, slug: str, seed: int, sha: str) -> None:
    """Say so when features for this name exist for other data (the data changed)."""
    if not folder.is_dir():
        return
    others = sorted(p.name for p in folder.glob(f"{slug}-*-seed{seed}.safetensors") if not p.name.startswith(f"{slug}-{sha[:12]}-"))
    if others:
        warnings.warn(
            f"cached {slug} features exist only for other data ({', '.join(others)}): the training data "
            f"changed (sha256 now {sha[:12]}...). Training new features; the old files stay in {folder}.",
            stacklevel=4,
        )


def _cached(
    slug: str,
    sha: str,
    seed: int,
    cache_dir: str | Path | None,
    device: torch.device,
    want: dict[str, Any],
    build: Callable[[dict[str, Any]], FeatureNet],
    train: Callable[[], FeatureNet],
) -> FeatureNet:
    """Load ``<slug>-<sha12>-seed<seed>`` from the cache if its facts match ``want``;
    else ``train()`` and store the result (``build(facts)`` makes an empty network to load into)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = folder / f"{slug}-{sha[:12]}-seed{seed}"
    net = _load_cached(stem, want, build, device)
    if net is not None:
        return net
    if not stem.with_suffix(".safetensors").is_file():
        _warn_other_data(folder, slug, seed, sha)
    log.info("training %s features (first use); they will be cached as %s.safetensors", slug, stem)
    net = train()
    _store(net, stem)
    return net


# -- 5. public entry points ----------------------------------------------------------------


def feature_extractor(
    dataset_name: str | Dataset,
    *,
    data_dir: str | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    epochs: int | None = None,
    max_train: int = 0,
    progress: bool | None = None,
) -> FeatureNet:
    """The feature network for a dataset's sample-quality metrics, cached after first use.

    ``mnist``, ``mnist-binarized`` (the same MNIST classifier) and ``fashion-mnist`` get
    deepgen's CNN classifier (:func:`train_classifier`); any other dataset, a name, a
    user path or a loaded :class:`Dataset`, gets :func:`autoencoder_features`. (A loaded
    Dataset named like a recipe is read again by name: ``mnist-binarized``'s classifier
    learns from grey MNIST.)
    ``cache_dir`` defaults to :func:`default_cache_dir`. ``epochs`` and ``max_train``
    shorten training (tests); they are part of what the cache checks. Returns a frozen
    :class:`FeatureNet` on ``device``; ``.describe()`` says what it is. ``progress``: a
    bar while it trains (None = when stderr is a terminal).
    """
    name = dataset_name.name if isinstance(dataset_name, Dataset) else dataset_name
    if epochs is not None and epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    if max_train < 0:
        raise UserError(f"max_train must be >= 0 (0 = all), got {max_train}")
    if name not in RECIPES:
        return autoencoder_features(
            dataset_name, data_dir=data_dir, cache_dir=cache_dir, device=device, seed=seed, epochs=epochs, max_train=max_train,
            progress=progress,
        )
    dev = _device(device)
    recipe = RECIPES[name]
    if epochs is not None:
        recipe = ClassifierRecipe(**{**recipe.to_dict(), "epochs": epochs})
    ds = _load_data(recipe.data, data_dir, max_train)  # mnist-binarized learns from grey MNIST
    sha = data_sha256(ds.train)
    arch = CNNArchitecture()
    want = {
        "format_version": FORMAT_VERSION,
        "kind": "classifier",
        "data_sha256": sha,
        "seed": seed,
        "architecture": arch.to_dict(),
        "recipe": recipe.to_dict(),
    }

    def build(facts: dict[str, Any]) -> FeatureNet:
        return FeatureNet(
            # The memory format it was trained in, so that loaded features equal fresh ones bit for bit.
            DigitCNN(arch).to(memory_format=torch.channels_last),
            name=recipe.data,
            kind="classifier",
            input_shape=arch.input_shape,
            feature_dim=arch.feature_dim,
            accuracy=facts["accuracy"],
            data_sha256=sha,
            seed=seed,
            info={k: v for k, v in facts.items() if k not in ("accuracy", "data_sha256", "seed")},
        )

    def train() -> FeatureNet:
        return _train_classifier(ds, recipe, seed, dev, max_train, sha, progress=resolve_progress(progress))

    return _cached(recipe.data, sha, seed, cache_dir, dev, want, build, train)


def autoencoder_features(
    dataset: str | Dataset,
    *,
    data_dir: str | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    epochs: int | None = None,
    max_train: int = 0,
    progress: bool | None = None,
) -> FeatureNet:
    """Features from a deepgen ``ae`` trained on ``dataset``: its 32-d codes ``encode(x)``.

    For datasets without a classifier recipe (``frey-faces``, ``digits``, user folders,
    tables). A conv autoencoder for images, an MLP otherwise, ``latent_dim=32``, about
    3000 Adam steps (at most 50 epochs; ``epochs`` overrides). ``kind="autoencoder"``,
    ``accuracy=None``; cached like the classifiers. Returns a frozen :class:`FeatureNet`
    taking (N, *spec.shape) inputs in model space. ``progress``: a bar while it trains
    (None = when stderr is a terminal).
    """
    dev = _device(device)
    if epochs is not None and epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    if isinstance(dataset, Dataset):
        ds = dataset if not max_train else _first_train(dataset, max_train)
    else:
        ds = _load_data(dataset, data_dir, max_train)
    if ds.spec.kind == "tokens":
        raise UserError(f"autoencoder features need numeric data; {ds.name!r} holds tokens (text).")
    recipe = AERecipe()
    sha = data_sha256(ds.train)
    n_epochs = epochs if epochs is not None else recipe.epochs_for(len(ds.train))
    network = "conv" if ds.spec.is_image else "mlp"
    want = {
        "format_version": FORMAT_VERSION,
        "kind": "autoencoder",
        "data_sha256": sha,
        "seed": seed,
        "recipe": {**asdict(recipe), "epochs": n_epochs, "network": network},
    }

    def build(facts: dict[str, Any]) -> FeatureNet:
        from ..models import create_model

        ae = create_model("ae", ds, network=network, latent_dim=recipe.latent_dim, lr=recipe.lr)
        return FeatureNet(
            _AECodes(ae),
            name=ds.name,
            kind="autoencoder",
            input_shape=tuple(ds.spec.shape),
            feature_dim=recipe.latent_dim,
            accuracy=None,
            data_sha256=sha,
            seed=seed,
            info={k: v for k, v in facts.items() if k not in ("accuracy", "data_sha256", "seed")},
        )

    def train() -> FeatureNet:
        return _train_autoencoder(ds, recipe, seed, dev, n_epochs, max_train, sha, progress=resolve_progress(progress))

    return _cached(_slug(ds.name), sha, seed, cache_dir, dev, want, build, train)


def _first_train(ds: Dataset, max_train: int) -> Dataset:
    """``ds`` with only its first ``max_train`` training examples."""
    return replace_splits(ds, train=ds.train.subset(max_train))


def mnist_classifier(
    *,
    data_dir: str | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> FeatureNet:
    """The one MNIST classifier (seed 0): ``feature_extractor("mnist", ...)``.

    Used for FID/KID/precision-recall on ``mnist`` and ``mnist-binarized``, and to label
    each channel of stacked MNIST (three digits -> one of 1000 modes; VEEGAN / PacGAN
    protocol, BENCHMARKS.md): ``net.predict(x)`` on (N, 1, 28, 28) images in [0, 1].
    Trained on grey MNIST with a quarter of the images binarized, so it reads binary
    samples too; ``net.info["accuracy_binarized"]`` is its accuracy on binarized test
    images. Trained once (about a minute on two CPU cores) and cached.
    """
    return feature_extractor("mnist", data_dir=data_dir, cache_dir=cache_dir, device=device, seed=0, progress=progress)


__all__ = [
    "AE_LATENT_DIM",
    "AERecipe",
    "CNNArchitecture",
    "ClassifierRecipe",
    "DigitCNN",
    "FEATURE_DIM",
    "FeatureNet",
    "Kind",
    "RECIPES",
    "autoencoder_features",
    "data_sha256",
    "default_cache_dir",
    "feature_extractor",
    "mnist_classifier",
    "random_shift",
    "train_classifier",
]
