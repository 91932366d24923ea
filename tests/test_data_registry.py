"""Dataset names, configs and the content-addressed cache."""
from __future__ import annotations

import dataclasses

import pytest

from mist_core.config import ConfigError, StrictConfig
from mist_core.data import DATASETS, dataset_config, dataset_name, load_splits
from mist_core.data import registry
from mist_core.data.cache import default_cache_dir
from mist_core.data.preview import write_preview

NAMES = ["mnist_easy", "mnist_hard", "mnist_hard_k9", "mnist_hard_k6_9", "mnist_hard_k3_9", "mnist_hard_k1_9", "mnist_uneven", "gabor", "svhn"]


def test_every_name_has_a_strict_config_with_the_common_fields():
    assert sorted(DATASETS) == sorted(NAMES)
    for name, cls in DATASETS.items():
        assert issubclass(cls, StrictConfig)
        assert {"n_train", "n_test", "seed"} <= set(cls.model_fields), name
        if name.startswith("mnist"):
            assert cls.model_fields["digits_dir"].default is None
            assert dataset_name(dataset_config(name, {})) == name


def test_unknown_name_key_or_type():
    with pytest.raises(ConfigError, match="mnist_hardest"):
        dataset_config("mnist_hardest", {})
    with pytest.raises(ConfigError, match="n_trian: unknown key"):
        dataset_config("mnist_hard", {"n_trian": 5})
    with pytest.raises(ConfigError, match="seed"):
        dataset_config("gabor", {"seed": 1.5})


def _counting(monkeypatch, name):
    calls = []
    entry = registry.ENTRIES[name]

    def generate(cfg):
        calls.append(cfg)
        return entry.generate(cfg)
    monkeypatch.setitem(registry.ENTRIES, name, dataclasses.replace(entry, generate=generate))
    return calls


def test_second_load_is_a_cache_hit(monkeypatch, tmp_path):
    calls = _counting(monkeypatch, "mnist_hard")
    cfg = dataset_config("mnist_hard", {"n_train": 5, "n_test": 3})
    a = load_splits(cfg, cache_dir=tmp_path)
    b = load_splits(dataset_config("mnist_hard", {"n_train": 5, "n_test": 3}), cache_dir=tmp_path)
    assert len(calls) == 1 and a.train.images.tobytes() == b.train.images.tobytes()
    assert len(list(tmp_path.glob("mnist_hard-*.npz"))) == 1
    load_splits(cfg.replace(seed=1), cache_dir=tmp_path)  # another config: another entry
    assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_default_cache_dir_follows_env_and_damaged_entry_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("MIST_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    calls = _counting(monkeypatch, "gabor")
    cfg = dataset_config("gabor", {"n_train": 2, "n_test": 1, "canvas": 32})
    load_splits(cfg)
    (entry,) = (tmp_path / "c").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    assert len(load_splits(cfg).train) == 2 and len(calls) == 2


def test_preview_draws_the_samples_and_their_boxes(tmp_path):
    from matplotlib.image import imread

    s = load_splits(dataset_config("mnist_hard", {"n_train": 3, "n_test": 2}), use_cache=False)
    img = imread(write_preview(s, tmp_path / "p.png", n=4))                  # (H, W, 4) RGBA in [0, 1]
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert ((g > 0.9) & (r < 0.2) & (b < 0.2)).sum() > 100                  # the lime ground-truth boxes
    assert ((r > 0.9) & (g > 0.9) & (b > 0.9)).sum() > 100                  # white digit ink on black
    with pytest.raises(ValueError, match="empty"):
        write_preview(s.train.subset(0), tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


@pytest.mark.parametrize("damage", ["directory", "truncated", "dangling link"])
def test_damaged_cache_entry_is_logged_removed_and_rebuilt(monkeypatch, tmp_path, caplog, damage):
    import logging

    calls = _counting(monkeypatch, "gabor")
    cfg = dataset_config("gabor", {"n_train": 2, "n_test": 1, "canvas": 32})
    load_splits(cfg, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    good = entry.read_bytes()
    entry.unlink()
    if damage == "directory":  # a directory in place of the file, with something in it
        entry.mkdir()
        (entry / "junk").write_text("x")
    elif damage == "truncated":
        entry.write_bytes(good[:100])
    else:
        entry.symlink_to(tmp_path / "gone.npz")
    with caplog.at_level(logging.WARNING, logger="mist_core.data.cache"):
        splits = load_splits(cfg, cache_dir=tmp_path)
    assert len(splits.train) == 2 and len(calls) == 2
    assert entry.is_file() and not entry.is_symlink() and entry.read_bytes() == good  # rebuilt, same content
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "mist_core.data.cache"]
    assert str(entry) in msg and "regenerating" in msg
    assert {"directory": "a directory", "truncated": "unreadable", "dangling link": "dangling"}[damage] in msg
    caplog.clear()
    load_splits(cfg, cache_dir=tmp_path)  # a hit now: nothing logged, nothing generated
    assert len(calls) == 2 and not caplog.records


def test_unwritable_cache_is_a_warning_not_an_error(monkeypatch, tmp_path, caplog):
    import logging

    blocker = tmp_path / "file"
    blocker.write_text("a regular file where the cache directory should be")
    cfg = dataset_config("gabor", {"n_train": 2, "n_test": 1, "canvas": 32})
    with caplog.at_level(logging.WARNING, logger="mist_core.data.cache"):
        splits = load_splits(cfg, cache_dir=blocker / "cache")
    assert len(splits.train) == 2
    assert any("cannot write the dataset cache entry" in r.getMessage() for r in caplog.records)
