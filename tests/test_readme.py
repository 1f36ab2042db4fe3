"""The README's Python code runs as written: every ```python block is executed in a fresh
folder, in order, sharing one namespace, except blocks whose first line is ``# illustrative``
(code that needs something a test cannot have, e.g. a SageMaker artifact)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "# illustrative"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if not b.lstrip().startswith(MARK)]
    assert runnable and len(blocks) - len(runnable) <= 1, "mark only what cannot run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(cache_dir))
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(runnable):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102 - our own README
    # what the Python API section promises
    assert (tmp_path / "runs" / "tiny" / "report.html").is_file()
    assert (tmp_path / "runs" / "fm-classifier" / "params.npz").is_file()
    assert namespace["ids"].shape == (10,) and namespace["customer"] in set(namespace["result"].recommendations["customer_id"])
