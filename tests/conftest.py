"""Test-wide setup: a private kernel cache per run, the `gpu` marker, hypothesis profiles."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" is the default: no deadline (the Triton interpreter and first-call codegen are slow and
# uneven on shared machines), few enough examples to keep the suite short, and the same examples on
# every run (derandomized), so the suite's time and outcome do not depend on the draw. "thorough" draws
# new random examples each run. `--hypothesis-profile` or HYPOTHESIS_PROFILE pick another.
settings.register_profile(
    "ci", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], print_blob=True,
    derandomize=True,
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_CACHE_ENV = "ATTNC_CACHE_DIR"
_saved_cache_env: list[str | None] = []


def pytest_configure(config: pytest.Config) -> None:
    # Runs before test modules are collected, so before they import attnc: every run (and every
    # xdist worker) starts from an empty kernel cache and never reads or pollutes the user's one.
    _saved_cache_env.append(os.environ.get(_CACHE_ENV))
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="attnc-test-cache-")
    # attnc must be imported before triton to switch the Triton interpreter on where there is no GPU;
    # a test module that imports triton first (isort puts it above attnc) would otherwise disable it.
    # A broken package is not hidden: it is reported, with its traceback, when the tests import it.
    with contextlib.suppress(Exception):
        import attnc  # noqa: F401


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
    previous = _saved_cache_env.pop()
    if previous is None:
        del os.environ[_CACHE_ENV]
    else:
        os.environ[_CACHE_ENV] = previous


@pytest.fixture(scope="session")
def attnc_cache_dir() -> pathlib.Path:
    """The kernel cache directory of this test run."""
    return pathlib.Path(os.environ[_CACHE_ENV])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
