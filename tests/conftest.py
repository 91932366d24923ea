"""Test-wide settings: a private dataset cache (never the user's ~/.cache), few threads, and the option
`--method module:Class` (repeatable) that adds a user's method to the contract tests (tests/test_contract.py)."""
from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--method", action="append", default=[], metavar="MODULE:CLASS",
                     help="also run the method contract tests on this Method subclass (repeatable; "
                          "or MIST_BENCH_METHODS=mod:A,mod:B)")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("MIST_CACHE_DIR")
    os.environ["MIST_CACHE_DIR"] = str(tmp_path_factory.mktemp("mist-cache"))
    yield
    if old is None:
        os.environ.pop("MIST_CACHE_DIR", None)
    else:
        os.environ["MIST_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _no_flush_denormal_leak():
    """Trainer turns on flush-to-zero for the whole process (a real speed fix); hypothesis refuses to run
    under FTZ, so every test starts and ends with it off."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (pytestmark = pytest.mark.usefixtures("one_thread")): small nets run no
    faster on two, and results do not depend on the machine's core count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
