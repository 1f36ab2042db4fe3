"""Fixtures shared across test files: the built-in datasets' cache, one finished ``recsys run``
on the ``tiny`` preset (read-only: tests that change a run copy it first), and float64 torch."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    from recsys.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_CACHE_DIR", str(cache_dir))
    try:
        assert main(["run", "--preset", "tiny", "-q", "--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


@pytest.fixture
def float64():
    """torch's default dtype float64 for the test (trainers then keep float64 parameters and use
    the PyTorch steps)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def _recsys_logger():
    """``recsys.cli.main`` (run in-process by many tests) configures the "recsys" logger; put it
    back after each test, so log capture (caplog) sees the library's lines in every test."""
    import logging

    logger = logging.getLogger("recsys")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
