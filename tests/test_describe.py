"""Finding what can be set: `mist-bench methods|datasets [NAME]`, `train --help`, the api's *_params tables, and the
messages a mistyped key, method or module gets (each names what is valid)."""
from __future__ import annotations

import json
import re
import sys

import pytest

from mist_core.config import ConfigError, parse_config
from mist_core.describe import REQUIRED, dataset_fields, method_fields, train_fields
from mist_core.method import SCALES


def _lines(argv: list[str], capsys) -> tuple[int, str, str]:
    from sweeps.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(text: str, field: str) -> list[str]:
    """The cells of `field`'s row of a printed fields table (split on runs of 2+ spaces)."""
    line = next(line for line in text.splitlines() if line.startswith(field + " "))
    return re.split(r"\s{2,}", line.strip())


# --- every field is described ---------------------------------------------------------------------------------
def _all_fields():
    from mist_core.data import DATASETS
    from mist_core.registry import method_names

    yield from ((f"method {n}", f) for n in method_names() for f in method_fields(n))
    yield from ((f"dataset {n}", f) for n in DATASETS for f in dataset_fields(n))
    yield from (("train", f) for f in train_fields())


def test_every_config_field_has_a_description_and_a_value_per_scale():
    missing = [f"{where}.{f.name}" for where, f in _all_fields() if not f.description.strip()]
    assert not missing, f"fields without Field(description=...): {missing}"
    for where, f in _all_fields():
        assert set(f.defaults) == set(SCALES) and f.type, (where, f)


def test_fields_read_types_bounds_and_each_scales_preset():
    from mist_core.mist import MIST
    from mist_core.presets import TRAIN_PRESETS

    mist = {f.name: f for f in method_fields("mist")}
    assert list(mist) == list(MIST.Config.model_fields)
    assert (mist["k"].type, mist["k"].bounds) == ("int", ">= 1")
    assert mist["sizes"].type == "tuple[float, ...]" and mist["sizes"].bounds == "length >= 1"
    for s in SCALES:   # each scale's own preset, not the class default
        assert mist["kp_lr"].defaults[s] == MIST.default_config(s).kp_lr
    assert mist["kp_lr"].search.startswith("log-uniform") and not mist["k"].search
    train = {f.name: f for f in train_fields()}
    assert train["max_steps"].defaults == {s: TRAIN_PRESETS[s]["max_steps"] for s in SCALES}
    assert train["lr_decay"].type == "'none' | 'cosine'" and train["lr_final"].bounds == ">= 0, <= 1"
    assert train["max_seconds"].type == "float or None"
    svhn = {f.name: f for f in dataset_fields("svhn")}
    assert svhn["train_dir"].defaults["quick"] == REQUIRED and svhn["n_train"].defaults["quick"] == 6000
    assert svhn["test_min_box_height"].bounds == ">= 0"   # on the inner type of an optional field


# --- the command line ------------------------------------------------------------------------------------------
def test_methods_lists_every_method_with_what_it_is(capsys):
    from mist_core.registry import method_names

    code, out, _ = _lines(["methods"], capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("a method")}
    assert set(rows) == set(method_names())
    for name in ("mist_reach", "ptopk", "supervised", "mist"):
        tasks, what = re.split(r"\s{2,}", rows[name].strip())[1:]
        assert tasks == "recon/classify" and len(what) > 20, rows[name]


def test_methods_name_prints_every_field(capsys):
    from mist_core.mist import MIST

    code, out, _ = _lines(["methods", "mist"], capsys)
    assert code == 0 and out.startswith("mist (mist_core.mist:MIST): MIST (sections 3-4")
    for name in MIST.Config.model_fields:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    cells = _row(out, "kp_lr")   # field, type, bounds, smoke, quick, paper, searched, description
    assert cells[:6] == ["kp_lr", "float", ">= 0", "10000", "100000", "10000"]
    assert cells[6] == "log-uniform 1000 .. 1e+06" and cells[7].startswith("SGD step")


def test_datasets_name_prints_every_field(capsys):
    code, out, _ = _lines(["datasets", "mnist_hard"], capsys)
    assert code == 0 and out.startswith("mnist_hard: The paper's MNIST hard")
    assert _row(out, "n_train")[:6] == ["n_train", "int", ">= 0", "64", "6000", "20000"]
    code, out, _ = _lines(["datasets"], capsys)
    assert code == 0 and all(len(re.split(r"\s{2,}", line.strip())) == 2 for line in out.splitlines()[:9])


@pytest.mark.parametrize("argv, message", [
    (["methods", "nope"], "mist-bench: error: unknown method 'nope'; known: air, "),
    (["datasets", "nope"], "mist-bench: error: unknown dataset 'nope'; known: gabor, "),
])
def test_an_unknown_name_is_one_line(capsys, argv, message):
    code, _, err = _lines(argv, capsys)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_train_help_describes_its_options_and_the_training_fields(capsys):
    with pytest.raises(SystemExit) as e:
        _lines(["train", "--help"], capsys)
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "mist-bench methods METHOD" in out and "--seed SEED" in out and "seed of the weights" in out
    assert _row(out, "eval_every")[:6] == ["eval_every", "int", ">= 1", "3", "100", "625"]
    assert "steps between interim evaluations" in out


# --- the same from Python ----------------------------------------------------------------------------------------
def test_api_params_tables():
    from sweeps import api

    m = api.method_params("ptopk")
    assert list(m.columns) == ["field", "type", "bounds", *SCALES, "searched", "description"]
    assert {"sigma", "n_samples", "kp_lr"} <= set(m.field) and m.description.str.len().min() > 0
    assert m.set_index("field").loc["n_samples", "searched"] == "integers 4 .. 64"
    assert api.dataset_params("gabor").set_index("field").loc["n_test", "paper"] == 2000
    assert "batch_size" in set(api.train_params().field)
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        api.method_params("nope")


# --- a mistyped key names the valid ones and the closest ------------------------------------------------------------
def test_an_unknown_key_names_the_closest_and_the_valid_keys():
    from mist_core.mist import MIST
    from mist_core.presets import TrainConfig

    with pytest.raises(ConfigError) as e:
        MIST.make_config("smoke", {"lr_tsk": 0.1})
    msg = str(e.value)
    assert "method.mist.lr_tsk: unknown key; did you mean lr_task? valid keys: k, sizes, patch_res," in msg
    assert msg.endswith(", ".join(MIST.Config.model_fields))
    with pytest.raises(ConfigError, match=r"train\.bach_size: unknown key; did you mean batch_size\?"):
        parse_config(TrainConfig, {"bach_size": 3}, where="train")


def test_an_unknown_nested_key_names_its_own_class_keys():
    from sweep_fixtures import config_with
    from sweeps.config import SweepConfig

    with pytest.raises(ConfigError) as e:
        parse_config(SweepConfig, config_with(search__metrc="rmse"), where="sweep")
    assert "sweep.search.metrc: unknown key; did you mean metric? valid keys: num_samples, metric, mode, seed" \
        in str(e.value)


def test_unknown_key_without_a_close_one_lists_the_valid_keys():
    from mist_core.presets import TrainConfig

    with pytest.raises(ConfigError) as e:
        parse_config(TrainConfig, {"zzzzzz": 3}, where="train")
    assert "train.zzzzzz: unknown key valid keys: batch_size, max_steps," in str(e.value)
    assert "did you mean" not in str(e.value)


def test_train_command_names_the_closest_method_key(capsys):
    code, _, err = _lines(["train", "--method", "mist", "--dataset", "mnist_hard", "--scale", "smoke",
                           "-m", "kp_lrr=1"], capsys)
    assert code == 2 and "method.mist.kp_lrr: unknown key; did you mean kp_lr? valid keys: k, sizes" in err


# --- method names and modules ---------------------------------------------------------------------------------------
def test_unknown_method_message_has_no_stray_quotes(capsys):
    code, _, err = _lines(["train", "--method", "nope", "--dataset", "mnist_hard", "--scale", "smoke"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("mist-bench: error: run.method: unknown method 'nope'; known: air,"), line
    assert '"' not in line and not line.endswith("'"), line


def test_a_module_that_cannot_be_imported_hints_at_pythonpath(tmp_path, monkeypatch, capsys):
    from mist_core.registry import get_method

    with pytest.raises(ModuleNotFoundError, match=r"no module named 'no_such_pkg_h35' .*PYTHONPATH"):
        get_method("no_such_pkg_h35.sub:Canvas")
    code, _, err = _lines(["train", "--method", "no_such_mod_h35:Canvas", "--dataset", "mnist_hard", "--scale",
                           "smoke"], capsys)
    assert code == 2 and "no module named 'no_such_mod_h35'" in err and "PYTHONPATH=." in err, err
    # the module is found but imports something missing: its own error, not a PYTHONPATH hint
    (tmp_path / "needs_dep_h35.py").write_text("import missing_dependency_h35\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        get_method("needs_dep_h35:Canvas")
    assert "missing_dependency_h35" in str(e.value) and "PYTHONPATH" not in str(e.value)
    with pytest.raises(ImportError, match="module 'json' has no 'Nope'"):
        get_method("json:Nope")


# --- small command behaviours ---------------------------------------------------------------------------------------
def test_report_of_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    code, _, err = _lines(["report", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.strip() == (f"mist-bench: error: {tmp_path / 'nope'}: no such folder or file (give a "
                                         "sweep folder, e.g. runs/sweeps/NAME, or its results.parquet)")
    (tmp_path / "empty").mkdir()
    code, _, err = _lines(["report", str(tmp_path / "empty")], capsys)   # a folder without rows: that, as before
    assert code == 2 and "no result rows at" in err


def test_train_prints_steps_as_integers(tmp_path, capsys):
    out_file = tmp_path / "run.json"
    code, out, _ = _lines(["train", "--method", "trivial", "--dataset", "mnist_hard", "--scale", "smoke",
                           "-t", "max_steps=2", "-t", "eval_every=1", "--out", str(out_file)], capsys)
    assert code == 0 and '"step": 2,' in out and json.loads(out)["step"] == 2
    steps = [h["step"] for h in json.loads(out_file.read_text())["history"]]
    assert steps == [1, 2] and all(type(s) is int for s in steps)


# --- progress in notebooks ------------------------------------------------------------------------------------------
def test_api_train_shows_progress_unless_told_not_to(capsys):
    from sweeps import api

    run = api.train("trivial", "mnist_hard", scale="smoke", train_params={"max_steps": 4, "eval_every": 2})
    err = capsys.readouterr().err
    assert "train: trivial on mnist_hard (smoke): preparing data..." in err
    assert "trivial on mnist_hard: 100%" in err and "4/4" in err and "rmse=" in err, err
    assert run.history["step"].tolist() == [2, 4]
    api.train("trivial", "mnist_hard", scale="smoke", train_params={"max_steps": 4, "eval_every": 2},
              progress=False)
    assert capsys.readouterr().err == ""
    assert "tqdm" in sys.modules
