"""Running ``recsys`` in a fresh interpreter, for tests that need a real process (exit codes,
signals, resource limits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli_command(*args: str, preexec: str = "") -> list[str]:
    """The argv of ``recsys ARGS`` in a fresh interpreter; ``preexec`` is Python run first
    (e.g. a resource limit)."""
    code = f"import sys\n{preexec}\nfrom recsys.cli import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def cli_env(cache: Path) -> dict[str, str]:
    return dict(os.environ, RECSYS_CACHE_DIR=str(cache))


def run_cli(*args: str, cache: Path, cwd: Path | None = None, preexec: str = "", timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``recsys ARGS`` in a fresh interpreter (``preexec``: Python run before it, e.g. a limit)."""
    return subprocess.run(cli_command(*args, preexec=preexec), capture_output=True, text=True, env=cli_env(cache),
                          cwd=cwd, timeout=timeout)  # fmt: skip
