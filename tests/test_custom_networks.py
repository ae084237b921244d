"""Bring your own networks: a user's nn.Module as encoder, decoder, generator or
discriminator (``deepgen.network``), trained, checkpointed (its class and arguments in
config.json, its weights in model.safetensors, no pickle), reloaded by ``load_run``,
``Trainer.resume`` and the CLI, and refused with one clear error where it cannot work.

The user's classes live in tests/custom_nets.py, importable as ``custom_nets`` (pytest
puts tests/ on the import path; the CLI subprocess gets it through PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from custom_nets import (
    Namespace,
    TinyDecoder,
    TinyDenoiser,
    TinyDiscriminator,
    TinyEncoder,
    TinyGenerator,
)
from helpers import assert_same_metrics

import deepgen
from deepgen.cli import main
from deepgen.data import DataConfig, ResidentLoader
from deepgen.errors import UserError
from deepgen.models import model_class, model_names
from deepgen.models.networks import check_network
from deepgen.nn.layers import MLPEncoder
from deepgen.training import TrainConfig, Trainer, load_run, seed_all
from deepgen.training import checkpoint as ckpt

TESTS = Path(__file__).resolve().parent
DATA = DataConfig(name="digits", max_train=128)
SHAPE = [1, 8, 8]
LATENT = 4


def _train_config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=50, batch_size=32, seed=0, device="cpu", log_every=1, progress=False, tensorboard=False)
    return base.replace(**changes)


def _vae(ds, **settings):
    enc = deepgen.network(TinyEncoder, shape=SHAPE, out=2 * LATENT, hidden=16)
    dec = deepgen.network(TinyDecoder, latent=LATENT, shape=SHAPE, hidden=16)
    return deepgen.create_model("vae", ds, encoder=enc, decoder=dec, latent_dim=LATENT, iwae_k=4, **settings)


def _gan(ds, **settings):
    g = deepgen.network(TinyGenerator, noise=8, shape=SHAPE, hidden=16)
    d = deepgen.network(TinyDiscriminator, shape=SHAPE, hidden=16)
    return deepgen.create_model("gan", ds, generator=g, discriminator=d, noise_dim=8, **settings)


BUILDERS = {"vae": _vae, "gan": _gan}


def _train(folder: Path, family: str, **train):
    ds = deepgen.load_dataset(DATA)
    seed_all(0)
    model = BUILDERS[family](ds)
    trainer = Trainer(model, ds, _train_config(**train), folder, data_config=DATA)
    trainer.fit()
    return trainer


@pytest.fixture
def no_pickle(monkeypatch):
    """Loading a run must read safetensors and JSON only: every unpickling entry point raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("a run folder was unpickled")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(owner, name, refuse)


# -- training, recording, reloading ----------------------------------------------------------


def test_vae_with_custom_networks_trains_records_and_reloads_bitwise(tmp_path, no_pickle):
    trainer = _train(tmp_path / "vae", "vae", max_steps=4)
    run = tmp_path / "vae"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["networks"] == {
        "encoder": {"class": "custom_nets:TinyEncoder", "kwargs": {"shape": SHAPE, "out": 2 * LATENT, "hidden": 16}},
        "decoder": {"class": "custom_nets:TinyDecoder", "kwargs": {"latent": LATENT, "shape": SHAPE, "hidden": 16}},
    }
    # The user's weights are in the one weights file, with everything else; no pickle files.
    ck = ckpt.current_checkpoint(run)
    names = set(ck.read_tensors(ckpt.WEIGHTS))
    assert {"encoder.net.0.weight", "decoder.net.2.bias"} <= names
    files = [p for p in run.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin")]

    loaded = load_run(run)
    assert isinstance(loaded.model.encoder, TinyEncoder) and isinstance(loaded.model.decoder, TinyDecoder)
    model = trainer.eval_model.eval()
    x = trainer.dataset.test.x[:16].float()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.log_prob(x, generator=gen()), loaded.model.log_prob(x, generator=gen()))
    assert torch.equal(model.sample(6, generator=gen()), loaded.model.sample(6, generator=gen()))
    assert loaded.model.network_records == model.network_records


def test_vae_with_custom_networks_resumes_exactly(tmp_path, no_pickle):
    full = _train(tmp_path / "full", "vae", max_steps=8)
    _train(tmp_path / "part", "vae", max_steps=5)
    resumed = Trainer.resume(tmp_path / "part", max_steps=8)
    assert isinstance(resumed.model.encoder, TinyEncoder)
    resumed.fit()
    assert resumed.step == 8
    assert_same_metrics(tmp_path / "full", tmp_path / "part")
    for (n, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), f"{n} differs after resume"
    assert json.loads((tmp_path / "part" / "config.json").read_text())["networks"]["decoder"]["class"] == "custom_nets:TinyDecoder"


def test_gan_with_custom_networks_and_ema_trains_reloads_and_resumes(tmp_path, no_pickle):
    full = _train(tmp_path / "full", "gan", max_steps=6, ema=0.9)
    cfg = json.loads((tmp_path / "full" / "config.json").read_text())
    assert cfg["networks"]["generator"] == {"class": "custom_nets:TinyGenerator", "kwargs": {"noise": 8, "shape": SHAPE, "hidden": 16}}
    assert cfg["networks"]["discriminator"]["class"] == "custom_nets:TinyDiscriminator"
    ck = ckpt.current_checkpoint(tmp_path / "full")
    assert "G.net.1.running_mean" in ck.read_tensors(ckpt.WEIGHTS)  # the user's buffers too
    assert ck.has(ckpt.EMA_WEIGHTS)

    loaded = load_run(tmp_path / "full")  # the EMA weights
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(full.eval_model.eval().sample(8, generator=gen()), loaded.model.sample(8, generator=gen()))
    assert isinstance(loaded.model.G, TinyGenerator) and isinstance(loaded.model.D, TinyDiscriminator)

    _train(tmp_path / "part", "gan", max_steps=3, ema=0.9)
    resumed = Trainer.resume(tmp_path / "part", max_steps=6)
    resumed.fit()
    assert_same_metrics(tmp_path / "full", tmp_path / "part")
    for (n, p), (_, q) in zip(full.eval_model.state_dict().items(), resumed.eval_model.state_dict().items()):
        assert torch.equal(p, q), f"EMA {n} differs after resume"


def test_cli_samples_a_custom_network_run_from_another_folder(tmp_path, monkeypatch, capsys):
    _train(tmp_path / "run", "vae", max_steps=2)
    run = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A fresh process, in another folder, finding the user's module through PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run(
        [sys.executable, "-m", "deepgen", "sample", str(run), "--n", "5", "--out", "s.npy", "--seed", "7"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    drawn = np.load(elsewhere / "s.npy")
    expected = load_run(run).model.sample(5, generator=torch.Generator().manual_seed(7), mean=True)
    # The same draws (to float rounding: the other process computes with its own number of threads).
    np.testing.assert_allclose(drawn, expected.numpy(), rtol=0, atol=1e-5)

    # Where the module cannot be imported: exit 2 and one line that names the class and the fix.
    monkeypatch.chdir(elsewhere)
    monkeypatch.delitem(sys.modules, "custom_nets")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != TESTS])
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--out", "t.npy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot import the class custom_nets:Tiny" in err and "PYTHONPATH" in err
    assert not (elsewhere / "t.npy").exists()


# -- refusals ----------------------------------------------------------------------------------


def _edit_config(run: Path, change) -> None:
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "path,words",
    [
        ("no_such_module_for_deepgen:TinyEncoder", ["no_such_module_for_deepgen:TinyEncoder", "PYTHONPATH"]),
        ("__main__:TinyEncoder", ["__main__:TinyEncoder", "script", "module of its own"]),
        ("custom_nets:Vanished", ["custom_nets:Vanished", "no longer defines it"]),
        ("os:getcwd", ["os:getcwd", "not an nn.Module class"]),
        ("not a path", ["not 'module:QualName'"]),
    ],
)
def test_an_unimportable_class_at_load_is_one_user_error(tmp_path, path, words):
    _train(tmp_path / "run", "vae", max_steps=1)
    _edit_config(tmp_path / "run", lambda cfg: cfg["networks"]["encoder"].update({"class": path}))
    for load in (lambda: load_run(tmp_path / "run"), lambda: Trainer.resume(tmp_path / "run", max_steps=2)):
        with pytest.raises(UserError) as err:
            load()
        for word in words:
            assert word in str(err.value)


def test_a_corrupt_networks_entry_is_one_user_error(tmp_path):
    _train(tmp_path / "run", "vae", max_steps=1)
    _edit_config(tmp_path / "run", lambda cfg: cfg.update({"networks": ["custom_nets:TinyEncoder"]}))
    with pytest.raises(UserError, match="'networks'"):
        load_run(tmp_path / "run")
    _edit_config(tmp_path / "run", lambda cfg: cfg.update({"networks": {"encoder": "custom_nets:TinyEncoder"}}))
    with pytest.raises(UserError, match="not {class, kwargs}"):
        load_run(tmp_path / "run")


def test_changed_network_arguments_do_not_fit_the_weights(tmp_path):
    _train(tmp_path / "run", "vae", max_steps=1)
    _edit_config(tmp_path / "run", lambda cfg: cfg["networks"]["encoder"]["kwargs"].update({"hidden": 17}))
    with pytest.raises(UserError, match="custom_nets:TinyEncoder"):
        load_run(tmp_path / "run")


def test_a_wrong_output_shape_is_one_user_error_with_both_shapes():
    ds = deepgen.load_dataset(DATA)
    enc = deepgen.network(TinyEncoder, shape=SHAPE, out=LATENT)  # a VAE encoder gives mean and log-variance: 2 * latent
    with pytest.raises(UserError) as err:
        deepgen.create_model("vae", ds, encoder=enc, latent_dim=LATENT)
    message = str(err.value)
    assert "custom encoder of vae" in message and "(2, 4)" in message and "expected (2, 8)" in message
    dec = deepgen.network(TinyDecoder, latent=LATENT, shape=[64])
    with pytest.raises(UserError, match=r"returned \(2, 1, 64\), expected \(2, 1, 1, 8, 8\)"):
        deepgen.create_model("ae", ds, decoder=dec, latent_dim=LATENT)
    d = deepgen.network(TinyEncoder, shape=SHAPE, out=1)  # a discriminator returns (logits, features)
    with pytest.raises(UserError, match=r"returned \(2, 1\), expected \(\(2,\), \(2, \*\)\)"):
        deepgen.create_model("gan", ds, discriminator=d)
    g = deepgen.network(TinyGenerator, noise=3, shape=SHAPE)  # the wrong input size: the call itself fails
    with pytest.raises(UserError, match=r"custom generator of gan .* raised RuntimeError"):
        deepgen.create_model("gan", ds, generator=g, noise_dim=8)


def test_an_unknown_network_name_lists_the_accepted_ones():
    ds = deepgen.load_dataset(DATA)
    enc = deepgen.network(TinyEncoder, shape=SHAPE, out=8)
    with pytest.raises(UserError, match="the vae model has no network 'generator' to replace: it lets you replace encoder, decoder"):
        deepgen.create_model("vae", ds, generator=enc)
    with pytest.raises(UserError, match="lets you replace generator, discriminator"):
        deepgen.create_model("gan", ds, encoder=enc)
    with pytest.raises(UserError, match="stacked-ae model has no network 'encoder'.*none of its networks"):
        deepgen.create_model("stacked-ae", ds, encoder=enc)


def test_networks_must_be_given_as_recorded_specs():
    ds = deepgen.load_dataset(DATA)
    with pytest.raises(UserError, match=r"encoder=deepgen.network\(TinyEncoder, \*\*kwargs\)"):
        deepgen.create_model("vae", ds, encoder=TinyEncoder(SHAPE, 8))
    with pytest.raises(UserError, match="argument 'act' of TinyEncoder is a type"):
        deepgen.network(TinyEncoder, shape=SHAPE, out=8, act=torch.nn.ReLU)
    with pytest.raises(UserError, match="finite"):
        deepgen.network(TinyEncoder, shape=SHAPE, out=8, scale=float("nan"))
    with pytest.raises(UserError, match="nn.Module class or instance"):
        deepgen.network(len)

    class Local(torch.nn.Module):
        pass

    with pytest.raises(UserError, match="inside a function"):
        deepgen.network(Local)
    with pytest.raises(UserError, match="cannot be rebuilt from the arguments given"):
        deepgen.network(TinyEncoder(SHAPE, 8))  # an instance without the arguments that built it
    with pytest.raises(UserError, match="builds other parameters than the instance"):
        deepgen.network(TinyEncoder(SHAPE, 8, hidden=20), shape=SHAPE, out=8)
    with pytest.raises(UserError, match=r"building the custom network custom_nets:TinyEncoder.* failed: TypeError"):
        deepgen.create_model("vae", ds, encoder=deepgen.network(TinyEncoder, shape=SHAPE, width=3))


def test_an_instance_is_used_as_given_and_the_random_streams_stay_as_they_were():
    ds = deepgen.load_dataset(DATA)
    torch.manual_seed(0)
    enc = TinyEncoder(SHAPE, 2 * LATENT)
    before = torch.get_rng_state()
    spec = deepgen.network(enc, shape=SHAPE, out=2 * LATENT)  # builds a copy to check the arguments
    assert torch.equal(torch.get_rng_state(), before)
    model = deepgen.create_model("vae", ds, encoder=spec, latent_dim=LATENT)
    assert model.encoder is enc and enc.training
    assert spec.record() == {"class": "custom_nets:TinyEncoder", "kwargs": {"shape": SHAPE, "out": 2 * LATENT}}
    # Tuples travel as JSON lists at creation too, so reloading builds the very same module.
    assert deepgen.network(TinyEncoder, shape=(1, 8, 8), out=np.int64(8)).kwargs == {"shape": SHAPE, "out": 8}


def test_a_main_module_class_warns_and_nested_classes_record_their_qualified_name():
    nested = deepgen.network(Namespace.Encoder, shape=SHAPE, out=8)
    assert nested.path == "custom_nets:Namespace.Encoder"
    main_cls = type("MainEncoder", (TinyEncoder,), {"__module__": "__main__"})
    with pytest.warns(UserWarning, match="__main__"):
        deepgen.network(main_cls, shape=SHAPE, out=8)


# -- every family that takes networks ------------------------------------------------------------


def _family_networks(name: str, cond: int = 0, pack: int = 1) -> dict:
    """A user network for every replaceable network of family ``name`` on digits, for
    ``cond`` classes (0: unconditional) and PacGAN packing ``pack``."""
    cfg = model_class(name).config_class()
    k = getattr(cfg, "latent_dim", 0)
    nets = {
        "encoder": deepgen.network(TinyEncoder, shape=SHAPE, out=2 * k if name == "vae" else k, cond=cond),
        "decoder": deepgen.network(TinyDecoder, latent=k, shape=SHAPE, cond=cond),
        "discriminator": deepgen.network(
            TinyDiscriminator, shape=[k] if name == "aae" else [pack * SHAPE[0], *SHAPE[1:]], cond=pack * cond
        ),
        "generator": deepgen.network(TinyGenerator, noise=getattr(cfg, "noise_dim", 0), shape=SHAPE, cond=cond),
        "denoiser": deepgen.network(TinyDenoiser, shape=SHAPE, classes=cond),
    }
    return {n: nets[n] for n in model_class(name).replaceable_networks}


FAMILIES = [n for n in model_names() if model_class(n).replaceable_networks]


def test_the_families_declare_their_replaceable_networks():
    assert {"vae", "ae", "sparse-ae", "denoising-ae", "contractive-ae", "aae", "gan", "dcgan", "wgan", "wgan-gp", "ddpm"} <= set(FAMILIES)
    for name in FAMILIES:
        for net, words in model_class(name).replaceable_networks.items():
            assert " to " in words and "(N" in words, f"{name}.{net}: say what it maps, in shapes"


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_each_phase_with_user_networks(name):
    ds = deepgen.load_dataset(DATA)
    seed_all(0)
    model = deepgen.create_model(name, ds, **_family_networks(name))
    batch = ResidentLoader(ds, 16, "cpu", seed=0).next()
    custom = {id(p) for m in model.modules() if type(m).__module__ == "custom_nets" for p in m.parameters()}
    reached = set()
    for phase in model.phases():
        model.zero_grad()
        out = model.loss(batch, phase.name)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        reached |= {id(p) for p in phase.parameters if p.grad is not None and id(p) in custom}
    assert reached == custom, "every user parameter gets a gradient in some phase"
    assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, *SHAPE)


@pytest.mark.parametrize("name,settings", [("vae", {"conditional": True}), ("gan", {"conditional": True, "pack": 2})])
def test_conditional_and_packed_models_call_user_networks_as_documented(name, settings):
    """Conditional models pass one-hot labels (N, K) as a second argument (packed: (N, pack * K))."""
    ds = deepgen.load_dataset(DATA)
    model = deepgen.create_model(name, ds, **_family_networks(name, cond=10, pack=settings.get("pack", 1)), **settings)
    batch = ResidentLoader(ds, 16, "cpu", seed=0).next()
    for phase in model.phases():
        assert torch.isfinite(model.loss(batch, phase.name).loss)
    assert model.sample(4, cond=3, generator=torch.Generator().manual_seed(0)).shape == (4, *SHAPE)
    # A network that takes no labels, in a conditional model: the check says so at creation.
    unlabelled = {"vae": "encoder", "gan": "discriminator"}[name]
    nets = {**_family_networks(name, cond=10, pack=settings.get("pack", 1)), unlabelled: _family_networks(name)[unlabelled]}
    with pytest.raises(UserError, match=f"custom {unlabelled} of {name}.*raised RuntimeError"):
        deepgen.create_model(name, ds, **nets, **settings)


SHAPE_CASES = [
    (name, settings)
    for name in ["vae", "ae", "aae", "gan", "dcgan", "wgan-gp"]
    for settings in [{}, {"network": "conv"}, {"conditional": True}, {"conditional": True, "pack": 2}]
    if set(settings) <= set(model_class(name).config_class.field_names())
]


@pytest.mark.parametrize("name,settings", SHAPE_CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in s.items()) or 'default'}" for n, s in SHAPE_CASES])
def test_the_declared_shapes_are_those_of_the_families_own_networks(name, settings):
    """network_io describes the built-in networks: each passes the check user networks get."""
    cls = model_class(name)
    ds = deepgen.load_dataset(DATA)
    model = deepgen.create_model(name, ds, **settings)
    for net in cls.replaceable_networks:
        module = getattr(model, net, None) if net in dict(model.named_children()) else getattr(model, net[0].upper())
        inputs, expected = model.network_io(net, 2)
        check_network(module, net, name, "built-in", cls.replaceable_networks[net], inputs, expected)


def test_a_deepgen_block_is_a_network_too(tmp_path):
    ds = deepgen.load_dataset(DATA)
    enc = deepgen.network(MLPEncoder, shape=SHAPE, hidden=[16], out_dim=2 * LATENT, act="elu")
    model = deepgen.create_model("vae", ds, encoder=enc, latent_dim=LATENT)
    assert model.network_records["encoder"]["class"] == "deepgen.nn.layers:MLPEncoder"
    Trainer(model, ds, _train_config(max_steps=1), tmp_path / "run", data_config=DATA).fit()
    assert isinstance(load_run(tmp_path / "run").model.encoder, MLPEncoder)
