"""deepgen's own feature networks (deepgen.metrics.features).

Fast checks on the built-in ``digits`` data and on small slices of real MNIST; the real
MNIST classifier is trained at most once per session (into a session-scoped cache
folder, from which every later test loads it; a background job started with the session
trains it on the core the other tests leave idle: conftest.py). Fashion-MNIST's accuracy (>= 90%, 8
epochs, about 3 minutes on two CPU cores) is left to the GPU: it is not trained here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepgen import load_dataset
from deepgen.errors import UserError
from deepgen.metrics import features as fm
from deepgen.metrics.features import (
    DigitCNN,
    FeatureNet,
    autoencoder_features,
    data_sha256,
    feature_extractor,
    mnist_classifier,
    random_shift,
    train_classifier,
)

SMALL = {"epochs": 1, "max_train": 512}  # a quick MNIST classifier: 4 steps of 128


@contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def mnist_net(real_data_dir: Path, feature_cache: Path, mnist_classifier_job) -> FeatureNet:
    """The real MNIST classifier, trained once per session into ``feature_cache`` (the
    session-scoped ``feature_cache`` and ``mnist_classifier_job`` are in conftest.py): by the
    background job where it ran, else here on first use (two threads, CI has two cores); then
    loaded from the cache."""
    fresh = mnist_classifier_job.wait() if mnist_classifier_job is not None else None
    with threads(max(1, min(2, os.cpu_count() or 1))):
        net = mnist_classifier(data_dir=str(real_data_dir), cache_dir=feature_cache)
    if fresh is not None:  # the cached copy is the network the job trained, as it described itself
        assert (net.describe(), net.accuracy, net.data_sha256) == (fresh["describe"], fresh["accuracy"], fresh["data_sha256"])
    return net


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any training fail, to prove that a network came from the cache."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained, but the cache should have been used")

    monkeypatch.setattr(fm, "_train_classifier", fail)
    monkeypatch.setattr(fm, "_train_autoencoder", fail)


def count_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("_train_classifier", "_train_autoencoder"):
        real = getattr(fm, name)

        def wrapped(*args: object, _real=real, _name=name, **kwargs: object) -> FeatureNet:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(fm, name, wrapped)
    return calls


def digits_images(n: int = 16) -> torch.Tensor:
    ds = load_dataset("digits")
    return ds.convert(ds.test.x[:n])  # (n, 1, 8, 8) in [0, 1]


# -- the network ---------------------------------------------------------------------------


def test_features_do_not_depend_on_the_batch() -> None:
    # Batch norm in training mode normalises with the batch's own statistics, so a
    # feature network left in training mode gives an image different features in
    # different company; FeatureNet is always in eval mode.
    torch.manual_seed(0)
    cnn = DigitCNN()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        for bn in (m for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    net = FeatureNet(cnn, name="mnist", kind="classifier", input_shape=(1, 28, 28), feature_dim=128, accuracy=None, data_sha256="0" * 64, seed=0)
    net.train()  # a no-op: stays in eval mode
    assert not net.training and not any(m.training for m in net.modules())
    x = torch.rand(1, 1, 28, 28)
    others = torch.rand(63, 1, 28, 28)
    with torch.no_grad():
        alone = net.features(x)
        in_batch = net.features(torch.cat([others, x]))[-1:]
        assert torch.allclose(alone, in_batch, atol=1e-5)
        assert torch.equal(net(x), alone)  # forward is features
        cnn.trunk.train()  # the bug this guards against: train-mode features move with the batch
        assert not torch.allclose(cnn.features(x), cnn.features(torch.cat([others, x]))[-1:], atol=1e-3)


def test_wrong_inputs_are_user_errors() -> None:
    net = FeatureNet(DigitCNN(), name="mnist", kind="classifier", input_shape=(1, 28, 28), feature_dim=128, accuracy=0.99, data_sha256="0" * 64, seed=0)
    assert net.features(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    assert net.logits(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert net.predict(torch.rand(3, 1, 28, 28)).dtype == torch.int64
    for shape in [(3, 1, 32, 32), (3, 28, 28), (3, 3, 28, 28), (1, 784)]:
        with pytest.raises(UserError, match=r"\(N, 1, 28, 28\)"):
            net.features(torch.rand(shape))
    with pytest.raises(UserError, match="float tensor"):
        net.features(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))


def test_random_shift_moves_each_image_within_the_bound() -> None:
    x = torch.zeros(200, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0  # one bright pixel in the middle
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(x, 0, g), x)
    y = random_shift(x, 2, g)
    assert torch.equal(y.sum(dim=(1, 2, 3)), torch.ones(200))  # nothing falls off, nothing added
    pos = y.flatten(1).argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # every offset in [-2, 2] is used ...
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25  # ... in all 25 combinations


# -- autoencoder features (no real data needed) ----------------------------------------------


def test_autoencoder_features_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_training(monkeypatch)
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    net = feature_extractor("digits", cache_dir=tmp_path, epochs=2)  # no recipe -> autoencoder
    assert torch.equal(torch.rand(1), expected_draw)  # training left the caller's RNG alone
    assert calls == ["_train_autoencoder"]
    assert net.kind == "autoencoder" and net.accuracy is None and net.name == "digits"
    assert net.feature_dim == 32 and net.input_shape == (1, 8, 8)
    assert net.describe().startswith("autoencoder features for digits (")
    assert "not a classifier" in net.describe()
    x = digits_images()
    assert net.features(x).shape == (16, 32)
    assert torch.allclose(net.extract(x, batch_size=5), net.features(x), atol=1e-6)
    with pytest.raises(UserError, match="no classes"):
        net.logits(x)
    with pytest.raises(UserError, match=r"\(N, 1, 8, 8\)"):
        net.features(torch.rand(2, 1, 28, 28))

    # The same seed gives the same weights; a round trip through the cache changes nothing.
    stem = tmp_path / f"digits-{net.data_sha256[:12]}-seed0"
    facts = json.loads(stem.with_suffix(".json").read_text())
    assert facts["kind"] == "autoencoder" and facts["data_sha256"] == net.data_sha256 and facts["seed"] == 0
    again = autoencoder_features("digits", cache_dir=tmp_path / "elsewhere", epochs=2)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    no_training(monkeypatch)
    loaded = feature_extractor("digits", cache_dir=tmp_path, epochs=2)
    assert torch.equal(loaded.features(x), net.features(x))
    assert loaded.describe() == net.describe()


def test_corrupt_cache_file_is_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = feature_extractor("digits", cache_dir=tmp_path, epochs=1)
    path = tmp_path / f"digits-{net.data_sha256[:12]}-seed0.safetensors"
    path.write_bytes(b"\x00garbage, not a safetensors file")
    calls = count_training(monkeypatch)
    with pytest.warns(UserWarning, match="cannot be read"):
        again = feature_extractor("digits", cache_dir=tmp_path, epochs=1)
    assert calls == ["_train_autoencoder"]
    x = digits_images()
    assert torch.equal(again.features(x), net.features(x))
    # Weights of the wrong shapes (a foreign file under our name) are retrained too.
    save_file({"net.ae.encoder.head.weight": torch.zeros(2, 2)}, str(path), metadata=dict(facts_metadata(net)))
    with pytest.warns(UserWarning, match="cannot be read"):
        feature_extractor("digits", cache_dir=tmp_path, epochs=1)
    assert calls == ["_train_autoencoder"] * 2
    no_training(monkeypatch)  # the retrained file was stored again and is good
    feature_extractor("digits", cache_dir=tmp_path, epochs=1)


def facts_metadata(net: FeatureNet) -> dict[str, str]:
    return {fm._META_KEY: json.dumps(fm._facts(net))}


def rewrite_facts(path: Path, **changes: object) -> None:
    """Change the stored facts of a cache file, keeping its weights."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        facts = json.loads(f.metadata()[fm._META_KEY])
    facts.update(changes)
    save_file(load_file(str(path)), str(path), metadata={fm._META_KEY: json.dumps(facts)})


def test_checksum_mismatch_is_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = feature_extractor("digits", cache_dir=tmp_path, epochs=1)
    path = tmp_path / f"digits-{net.data_sha256[:12]}-seed0.safetensors"
    rewrite_facts(path, data_sha256="f" * 64)
    calls = count_training(monkeypatch)
    with pytest.warns(UserWarning, match="trained on other data"):
        feature_extractor("digits", cache_dir=tmp_path, epochs=1)
    assert calls == ["_train_autoencoder"]
    # Other data (here: fewer training examples) gets new features, and a warning that
    # the cached ones belong to data that has changed.
    with pytest.warns(UserWarning, match="exist only for other data"):
        other = feature_extractor("digits", cache_dir=tmp_path, epochs=1, max_train=500)
    assert calls == ["_train_autoencoder"] * 2
    assert other.data_sha256 != net.data_sha256
    # A changed recipe is retrained as well.
    rewrite_facts(path, seed=7)
    with pytest.warns(UserWarning, match="its seed is 7"):
        feature_extractor("digits", cache_dir=tmp_path, epochs=1)


def test_data_sha256_sees_every_byte() -> None:
    ds = load_dataset("digits")
    base = data_sha256(ds.train)
    assert base == data_sha256(ds.train) and len(base) == 64
    x = ds.train.x.clone()
    x[-1, 0, -1, -1] ^= 1
    assert data_sha256(type(ds.train)(x, ds.train.y)) != base
    y = ds.train.y.clone()
    y[0] = (y[0] + 1) % 10
    assert data_sha256(type(ds.train)(ds.train.x, y)) != base


def test_unknown_recipe_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no classifier recipe for dataset 'digits'"):
        train_classifier("digits")


# -- the MNIST classifier (real data) --------------------------------------------------------


def test_classifier_training_is_deterministic(real_data_dir: Path) -> None:
    a = train_classifier("mnist", data_dir=str(real_data_dir), seed=3, **SMALL)
    b = train_classifier("mnist", data_dir=str(real_data_dir), seed=3, **SMALL)
    c = train_classifier("mnist", data_dir=str(real_data_dir), seed=4, **SMALL)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.accuracy == b.accuracy and a.seed == 3 and a.kind == "classifier"


def test_classifier_cache_round_trip(real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_training(monkeypatch)
    net = feature_extractor("mnist", data_dir=str(real_data_dir), cache_dir=tmp_path, **SMALL)
    assert calls == ["_train_classifier"]
    stem = tmp_path / f"mnist-{net.data_sha256[:12]}-seed0"
    facts = json.loads(stem.with_suffix(".json").read_text())
    for key in ("accuracy", "data_sha256", "seed", "architecture", "torch_version", "date"):
        assert key in facts
    assert facts["accuracy"] == net.accuracy and facts["architecture"]["feature_dim"] == 128
    no_training(monkeypatch)
    # mnist-binarized shares the MNIST classifier: the same file.
    loaded = feature_extractor("mnist-binarized", data_dir=str(real_data_dir), cache_dir=tmp_path, **SMALL)
    ds = load_dataset("mnist", data_dir=str(real_data_dir))
    x = ds.convert(ds.test.x[:64])
    assert torch.equal(loaded.features(x), net.features(x))
    assert torch.equal(loaded.logits(x), net.logits(x))
    assert (loaded.name, loaded.accuracy, loaded.data_sha256) == ("mnist", net.accuracy, net.data_sha256)
    assert loaded.describe() == net.describe()


def test_mnist_classifier_reaches_99_percent(mnist_net: FeatureNet, real_data_dir: Path) -> None:
    net = mnist_net
    assert net.kind == "classifier" and net.name == "mnist" and net.seed == 0 and net.feature_dim == 128
    assert net.accuracy is not None and net.accuracy >= 0.99, net.describe()
    assert net.info["accuracy_binarized"] >= 0.98, net.info  # it also reads binary samples
    assert net.describe().startswith("MNIST classifier (test accuracy 99.")
    ds = load_dataset("mnist", data_dir=str(real_data_dir))
    x, y = ds.convert(ds.test.x[:2000]), ds.test.y[:2000]
    assert net.extract(x, batch_size=700).shape == (2000, 128)
    assert (net.predict(x) == y).float().mean() >= 0.98
    # Features separate the classes: nearest class mean in feature space is right >= 97%.
    h = net.extract(x)
    means = torch.stack([h[y == k].mean(0) for k in range(10)])
    assert (torch.cdist(h, means).argmin(1) == y).float().mean() >= 0.97


def test_mnist_classifier_is_loaded_from_the_cache(mnist_net: FeatureNet, real_data_dir: Path, feature_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_training(monkeypatch)
    again = mnist_classifier(data_dir=str(real_data_dir), cache_dir=feature_cache)
    assert again.describe() == mnist_net.describe()
    for name in ("mnist-binarized", "mnist"):
        assert feature_extractor(name, data_dir=str(real_data_dir), cache_dir=feature_cache).data_sha256 == mnist_net.data_sha256
