"""Fixtures shared by the command-line tests: the built-in datasets' cache and one finished
``recsys run`` on the ``tiny`` preset (read-only: tests that change a run copy it first)."""

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
