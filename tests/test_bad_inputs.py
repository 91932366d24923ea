"""Bad inputs, as a new user gives them: corrupt data files and values a run cannot use, refused by every entry point
(`mist-bench train`, `preview`, `sweep`, `python -m bench`, the ladder, the paper check) with one line naming the file
or field, exit status 2, no traceback, nothing left behind, before any data is generated or Ray started.

The entry points are called in-process (their `main`); nothing here trains.
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from data_fixtures import SVHN_TEST, SVHN_TRAIN, write_digit_struct, write_idx, write_mnist_dir, write_svhn_dir

from sweep_fixtures import config_with, write_config

MIST_SMOKE = ["--method", "mist", "--dataset", "mnist_hard", "--scale", "smoke"]


def _error_line(err: str) -> str:
    """The one line of an expected failure (and the assertion that there is nothing else: no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("mist-bench: error: "), err
    return lines[0]


def _refused(main, argv, capsys) -> str:
    """Run an entry point's main; it must end with status 2 (returned, or argparse's SystemExit) and one line."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    return _error_line(capsys.readouterr().err)


# --- data files that exist but are corrupt: the reader names the file and what is wrong -----------------------
def _mnist(tmp_path, **changes):
    """A valid MNIST folder, then files replaced: name -> array (written as IDX) or bytes (written as they are)."""
    d = write_mnist_dir(tmp_path / "mnist")
    for name, content in changes.items():
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            write_idx(d / name, content)
    return d


def _idx_header(magic: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)


IDX_CASES = [  # file -> content, what the message must say
    ("wrong magic", "train-images-idx3-ubyte", np.arange(60, dtype=np.uint8), "wrong IDX magic number 00000801"),
    ("truncated", "train-images-idx3-ubyte", _idx_header(0x803, (60, 28, 28)) + bytes(100), "truncated or corrupt"),
    ("huge dimensions", "train-images-idx3-ubyte", _idx_header(0x803, (2**32 - 1,) * 3) + bytes(10),
     "truncated or corrupt"),
    ("empty file", "t10k-labels-idx1-ubyte", b"", "(empty file)"),
    ("corrupt gzip", "t10k-labels-idx1-ubyte.gz", gzip.compress(bytes(100))[:-8], "corrupt or truncated gzip"),
    ("not 28x28", "t10k-images-idx3-ubyte", np.ones((30, 27, 27), np.uint8), "expected 28x28 digits"),
    ("label out of range", "train-labels-idx1-ubyte", np.arange(60, dtype=np.uint8) % 11, "label 10 is not a digit"),
    ("a class missing", "train-labels-idx1-ubyte", np.arange(60, dtype=np.uint8) % 9, "no digit of class(es) [9]"),
    ("labels and images differ", "t10k-labels-idx1-ubyte", np.arange(29, dtype=np.uint8) % 10,
     "29 labels for 30 images"),
    ("blank images", "t10k-images-idx3-ubyte", np.zeros((30, 28, 28), np.uint8), "every image is blank"),
]


@pytest.mark.parametrize("what,name,content,needle", IDX_CASES, ids=[c[0] for c in IDX_CASES])
def test_corrupt_mnist_file_is_named(tmp_path, what, name, content, needle):
    from mist_core.data import DataError, check_source, dataset_config

    if name.endswith(".gz"):  # the gzipped spelling is read in place of the plain one
        (tmp_path / "mnist").mkdir()
    d = _mnist(tmp_path, **{name: content})
    if name.endswith(".gz"):
        (d / name.removesuffix(".gz")).unlink()
    with pytest.raises(DataError) as e:
        check_source(dataset_config("mnist_hard", {"digits_dir": str(d)}))
    assert str(e.value).startswith(str(d / name)) and needle in str(e.value) and "\n" not in str(e.value)


SVHN_CASES = [  # (image name, rows) replacing the first training entry -> what the message must say
    ("label 0", [[0, 10, 5, 15, 35], [10, 30, 6, 16, 34]], "1.png: label [0.0, 10.0] outside 1..10"),
    ("label 11", [[1, 10, 5, 15, 35], [11, 30, 6, 16, 34]], "outside 1..10"),
    ("not a number", [[1, np.nan, 5, 15, 35], [10, 30, 6, 16, 34]], "1.png: a bbox value is not a finite number"),
    ("negative height", [[1, 10, 5, 15, -35], [10, 30, 6, 16, 34]], "1.png: a box of negative width or height"),
]


@pytest.mark.parametrize("what,rows,needle", SVHN_CASES, ids=[c[0] for c in SVHN_CASES])
def test_corrupt_svhn_digit_struct_is_named(tmp_path, what, rows, needle):
    from mist_core.data import DataError, check_source, dataset_config, load_splits

    train, test = write_svhn_dir(tmp_path / "train", SVHN_TRAIN), write_svhn_dir(tmp_path / "test", SVHN_TEST)
    entries = [("1.png", np.array(rows, np.float64))] + [(n, np.array(r, np.float64)) for n, _, r in SVHN_TRAIN[1:]]
    write_digit_struct(train / "digitStruct.mat", entries)
    cfg = dataset_config("svhn", {"train_dir": str(train), "test_dir": str(test)})
    for read in (check_source, lambda c: load_splits(c, use_cache=False)):  # before a run, and in it: one line
        with pytest.raises(DataError) as e:
            read(cfg)
        assert str(e.value).startswith(f"{train / 'digitStruct.mat'}: ") and needle in str(e.value)


def test_svhn_digit_struct_listing_a_missing_image_or_nothing_is_named(tmp_path):
    from mist_core.data import DataError, check_source, dataset_config

    train, test = write_svhn_dir(tmp_path / "train", SVHN_TRAIN), write_svhn_dir(tmp_path / "test", SVHN_TEST)
    cfg = dataset_config("svhn", {"train_dir": str(train), "test_dir": str(test)})
    check_source(cfg)
    (test / "3.png").unlink()  # the last entry's image
    with pytest.raises(DataError, match=f"{test / 'digitStruct.mat'}: lists 3.png, which is not in {test}"):
        check_source(cfg)
    write_digit_struct(train / "digitStruct.mat", [])
    with pytest.raises(DataError, match="digitStruct.mat: no images listed"):
        check_source(cfg)


def test_corrupt_data_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """The same line from `train`, the paper check and the sweep's plan (at --check too, and before Ray for the real
    run). (The ladder reads no user data: its datasets are generated.)"""
    import ray

    from bench import paper_check
    from sweeps.cli import main

    d = _mnist(tmp_path, **{"train-labels-idx1-ubyte": np.arange(60, dtype=np.uint8) % 11})
    needle = f"{d / 'train-labels-idx1-ubyte'}: label 10 is not a digit (0-9)"
    assert _refused(main, ["train", *MIST_SMOKE, "-d", f"digits_dir={d}"], capsys) == f"mist-bench: error: {needle}"
    assert needle in _refused(paper_check.main, [*PAPER, "--digits-dir", str(d)], capsys)
    path = write_config(tmp_path, config_with(methods=["trivial"], search__num_samples=1,
                                              overrides=[{"dataset_params": {"digits_dir": str(d)}}]))
    for extra in (["--check"], ["--storage", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]):
        line = _refused(main, ["sweep", str(path), *extra], capsys)
        assert line.endswith(f"cell (mnist_hard, trivial): {needle}")
    assert not ray.is_initialized() and not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


# --- one set of checks for every entry point ---------------------------------------------------------------------
LADDER = ["run", "--scale", "smoke", "--steps", "2", "--rungs", "mist", "--threads", "1"]
PAPER = ["--scale", "smoke", "--device", "cpu", "--threads", "1", "--steps", "2"]
ENTRY_CASES = [  # (cause, entry point, argv or sweep config, the field the line names)
    ("huge learning rate", "train", [*MIST_SMOKE, "-m", "lr_task=50.0"],
     "methods.mist.lr_task=50: a learning rate over 1000 times its preset (0.001)"),
    ("huge learning rate", "sweep", config_with(overrides=[{"methods": ["mist"], "method_params": {"kp_lr": 1e9}}]),
     "cell (mnist_hard, mist): methods.mist.kp_lr=1e+09: a learning rate over 1000 times its preset (10000)"),
    ("huge learning rate", "ladder", [*LADDER, "-m", "lr_heat=5"], "methods.mist.lr_heat=5: a learning rate over"),
    ("negative seed", "train", [*MIST_SMOKE, "--seed", "-1"], "seed=-1: a seed must be in 0..4294967295"),
    ("negative seed", "ladder", [*LADDER, "--seeds", "0", "-3"], "seed=-3: a seed must be in 0..4294967295"),
    ("negative seed", "paper_check", [*PAPER, "--seed", "-2"], "seed=-2: a seed must be in 0..4294967295"),
    ("negative dataset seed", "train", [*MIST_SMOKE, "-d", "seed=-1"], "mnist_hard.seed: Input should be greater"),
    ("negative dataset seed", "preview", ["mnist_hard", "-d", "seed=-1"], "mnist_hard.seed: Input should be greater"),
    ("negative dataset seed", "sweep", config_with(overrides=[{"dataset_params": {"seed": -4}}]),
     "mnist_hard.seed: Input should be greater than or equal to 0 (got -4)"),
    ("unknown device", "train", [*MIST_SMOKE, "-t", "device=tpu"], "train.device='tpu': unknown device"),
    ("unknown device", "bench", ["--device", "tpu", "--only", "steps"], "--device='tpu': unknown device"),
    ("unknown device", "paper_check", [*PAPER[:2], "--device", "gpu"], "--device='gpu': unknown device"),
    ("absent device", "train", [*MIST_SMOKE, "-t", "device=cuda:7"], "train.device='cuda:7': "),
    ("batch larger than the data", "train", [*MIST_SMOKE, "-t", "batch_size=65"],
     "train.batch_size=65 > datasets.mnist_hard.n_train=64: not one whole training batch"),
    ("batch larger than the data, nothing to learn", "train",
     ["--method", "trivial", "--dataset", "mnist_hard", "--scale", "smoke", "-t", "batch_size=65"],
     "train.batch_size=65 > datasets.mnist_hard.n_train=64"),
    ("batch larger than the data, nothing to learn", "sweep", config_with(methods=["trivial"], train={"batch_size": 99}),
     "cell (mnist_hard, trivial): train.batch_size=99 > datasets.mnist_hard.n_train=64"),
    ("non-finite number", "train", [*MIST_SMOKE, "-m", "lr_task=nan"], "method.mist.lr_task: Input should be"),
    ("non-finite number", "sweep", config_with(overrides=[{"dataset_params": {"mean_count": float("inf")}}],
                                               datasets=["gabor"], methods=["trivial"]),
     "datasets.gabor.mean_count=inf: not a finite number"),
    ("non-finite number", "bench", ["--sweep-seconds", "inf", "--only", "sweep"], "--sweep-seconds=inf: not a finite"),
    ("non-finite number", "paper_check", [*PAPER, "--time-limit", "nan"], "--time-limit must be a finite number"),
]


def _main(entry: str, tmp_path, argv_or_cfg):
    if entry == "sweep":
        from sweeps.cli import main

        return main, ["sweep", str(write_config(tmp_path, argv_or_cfg)), "--check"]
    if entry in ("train", "preview"):
        from sweeps.cli import main

        return main, [entry, *argv_or_cfg]
    if entry == "ladder":
        from bench.ladder import main

        return main, [*argv_or_cfg, "--out", str(tmp_path / "out" / "ladder.json")]
    if entry == "bench":
        from bench.cli import main

        return main, [*argv_or_cfg, "--out", str(tmp_path / "out" / "bench.json")]
    from bench.paper_check import main

    return main, [*argv_or_cfg, "--out", str(tmp_path / "out" / "paper.json")]


@pytest.mark.parametrize("cause,entry,argv,needle", ENTRY_CASES, ids=[f"{c[1]}: {c[0]}" for c in ENTRY_CASES])
def test_every_entry_point_refuses_by_name(tmp_path, capsys, monkeypatch, cause, entry, argv, needle):
    monkeypatch.chdir(tmp_path)  # whatever an entry point would leave behind lands here
    main, argv = _main(entry, tmp_path, argv)
    assert needle in _refused(main, argv, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["sweep.yaml"] if entry == "sweep" else [])


def test_preview_of_an_unknown_dataset_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    line = _refused(main, ["preview", "no_such_data"], capsys)
    assert line.startswith("mist-bench: error: unknown dataset 'no_such_data'; known: ")
    assert _refused(main, ["preview", "mnist_hard", "--out", "deep/er/p.png", "-d", "digits_dir=absent"], capsys) \
        == "mist-bench: error: digits_dir absent: not a directory"
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_is_one_line(capsys):
    """A loss that becomes non-finite mid-run (the Trainer's FloatingPointError, naming method, loss and step) is an
    expected failure of the one error path, not a traceback."""
    from sweeps.command import run_command

    def diverge():
        raise FloatingPointError("mist: loss task is nan at step 3")

    assert run_command(diverge) == 2
    assert _error_line(capsys.readouterr().err) == "mist-bench: error: mist: loss task is nan at step 3"


def test_a_trial_failing_on_corrupt_data_reports_the_same_line(tmp_path):
    """Where the data is not local to the driver, a trial reads it and fails: the sweep's line for that trial is the
    data layer's own, as the pre-flight check would have given it; out of memory and a dead process are named."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from mist_core.data import DataError, check_source, dataset_config
    from sweeps.failures import failure_line

    d = _mnist(tmp_path, **{"train-labels-idx1-ubyte": np.arange(60, dtype=np.uint8) % 9})
    with pytest.raises(DataError) as e:
        check_source(dataset_config("mnist_hard", {"digits_dir": str(d)}))

    def in_trial(cause: Exception) -> Exception:  # what Tune hands the driver for a trial that raised `cause`
        return RayTaskError("trainable", "Traceback (most recent call last): ...", cause, proctitle="ray::trainable",
                            pid=1, ip="127.0.0.1").as_instanceof_cause()

    assert failure_line(in_trial(e.value)) == str(e.value)
    oom = failure_line(in_trial(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")))
    assert oom == "out of memory: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (lower " \
                  "train.batch_size or the networks, or run fewer trials at once)"
    assert failure_line(ActorDiedError()).startswith("its process or its node died (ActorDiedError: ")
    assert failure_line(in_trial(ValueError("bad\nworse"))) == "ValueError: bad"
