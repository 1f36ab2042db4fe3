"""Reading saved files safely: a damaged model or run raises ``ModelFormatError`` naming the
file (never its content), before anything large is allocated; the CLI turns it into one
``error:`` line and exit status 2 for ``recommend``, ``evaluate`` and ``serve``."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recsys.cli import main
from recsys.errors import ModelFormatError
from recsys.model import FittedFM
from recsys.saved_run import SavedRun
from tests.cli_helpers import run_cli


def _npy(shape: tuple[int, ...], dtype: str = "<f4", payload: bytes = b"") -> bytes:
    """A .npy member whose header claims ``shape`` and whose data is ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _write_npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    return FittedFM(0.1, rng.normal(size=9), rng.normal(size=(9, 4)), metadata={"n_users": 4, "n_items": 5}).save(tmp_path / "fm")


def _set_config(path: Path, **values: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(values)
    (path / "config.json").write_text(json.dumps(cfg))


def test_a_header_claiming_373_gib_is_refused_before_allocation(saved: Path, cache_dir: Path) -> None:
    """Both files claim a 1e6 x 1e5 float32 V (373 GiB; w is complete) but the member holds 16
    bytes. numpy would allocate 373 GiB (MemoryError in a process limited to 3 GiB of address
    space); the check refuses first."""
    _set_config(saved, feature_dim=1_000_000, num_factors=100_000)
    _write_npz(saved / "params.npz", {"w": _npy((1_000_000,), payload=b"\0" * 4_000_000),
                                      "V": _npy((1_000_000, 100_000), payload=b"\0" * 16)})  # fmt: skip
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from recsys.model import FittedFM\nfrom recsys.errors import ModelFormatError\n"
        f"try:\n    FittedFM.load({str(saved)!r})\nexcept ModelFormatError as exc:\n    print(exc)\n    sys.exit(7)\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert "params.npz: array 'V' holds the wrong number of bytes" in proc.stdout


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ({"w": _npy((9,), payload=b"\0" * 36), "V": _npy((400_000, 1_000_000), payload=b"\0" * 144)}, "config.json says"),
        ({"w": _npy((9,), payload=b"\0" * 36), "V": _npy((9, 4), "<i8", b"\0" * 288)}, "config.json says"),
        ({"w": _npy((9,), payload=b"\0" * 36), "V": _npy((9, 4), payload=b"\0" * 100)}, "wrong number of bytes"),
        ({"w": _npy((9,), payload=b"\0" * 36)}, "lacks the array 'V'"),
    ],
    ids=["shape-not-in-config", "integer-dtype", "truncated-data", "missing-array"],
)
def test_array_headers_are_checked_against_config_json(saved: Path, members: dict[str, bytes], needle: str) -> None:
    _write_npz(saved / "params.npz", members)
    with pytest.raises(ModelFormatError, match=needle):
        FittedFM.load(saved)


def test_a_compressed_member_is_refused(saved: Path) -> None:
    with zipfile.ZipFile(saved / "params.npz", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", _npy((9,), payload=b"\0" * 36))
        zf.writestr("V.npy", _npy((9, 4), payload=b"\0" * 144))
    with pytest.raises(ModelFormatError, match="not stored as recsys writes it"):
        FittedFM.load(saved)


def test_non_finite_parameters_are_refused(tmp_path: Path) -> None:
    V = np.ones((3, 2))
    V[1, 0] = np.nan
    path = FittedFM(0.0, np.ones(3), V).save(tmp_path / "fm")
    with pytest.raises(ModelFormatError, match="NaN or infinite"):
        FittedFM.load(path)


def test_a_valid_model_still_loads_exactly(saved: Path) -> None:
    fm = FittedFM.load(saved)
    with np.load(saved / "params.npz") as z:
        np.testing.assert_array_equal(fm.V, z["V"])
        np.testing.assert_array_equal(fm.w, z["w"])


# ---------------------------------------------------------------------------------------------
# damaged runs
# ---------------------------------------------------------------------------------------------
def _random_bytes(n: int) -> bytes:
    return np.random.default_rng(5).integers(0, 256, n, dtype=np.uint8).tobytes()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "random-knn-index": (lambda r: (r / "knn" / "index.faiss").write_bytes(_random_bytes(5000)), "knn/index.faiss"),
    "truncated-train": (lambda r: _truncate(r / "data" / "train.parquet"), "data/train.parquet"),
    "run-json-list": (lambda r: (r / "run.json").write_text("[]"), "run.json"),
    "run-json-not-utf8": (lambda r: (r / "run.json").write_bytes(b"\xff\xfe{}"), "run.json"),
    "missing-config": (lambda r: (r / "config.toml").unlink(), "config.toml"),
    "missing-products": (lambda r: (r / "data" / "products.parquet").unlink(), "data/products.parquet"),
    "missing-params": (lambda r: (r / "models" / "ranking" / "params.npz").unlink(), "models/ranking"),
    "random-params": (lambda r: (r / "models" / "ranking" / "params.npz").write_bytes(_random_bytes(100)), "params.npz"),
    "products-not-a-mapping": (lambda r: (r / "data" / "products.parquet").write_bytes(
        (r / "data" / "customers.parquet").read_bytes()), "products.parquet"),
}  # fmt: skip


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request: pytest.FixtureRequest, tiny_run: Path, tmp_path: Path) -> tuple[Path, str]:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    damage, where = DAMAGE[request.param]
    damage(run)
    return run, where


def _use(run: Path) -> None:
    saved = SavedRun(run)
    rec = saved.recommender()
    rec.recommendations([saved.mappings.customer_ids[0]], k=3)
    _ = saved.test


def test_a_damaged_run_raises_model_format_error_naming_the_file(damaged: tuple[Path, str]) -> None:
    run, where = damaged
    with pytest.raises(ModelFormatError) as info:
        _use(run)
    assert where.split("/")[-1] in str(info.value)


SHOWN = ("random-knn-index", "truncated-train", "run-json-list", "missing-config")


@pytest.mark.parametrize("command", ["recommend", "evaluate"])
def test_the_cli_reports_a_damaged_run_in_one_line(
    command: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in SHOWN:
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        DAMAGE[name][0](run)
        extra = ["--customer-id", "1"] if command == "recommend" else []
        assert main([command, "--run", str(run), *extra]) == 2, name
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and DAMAGE[name][1].split("/")[-1] in errors[0], (name, err)


def test_serve_refuses_a_damaged_run_before_listening(tiny_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    """In a subprocess: if the damage were not caught, ``serve`` would start and the timeout fail the test."""
    for name in SHOWN:
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        DAMAGE[name][0](run)
        proc = run_cli("serve", "--run", str(run), "--port", "0", cache=cache_dir, timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert DAMAGE[name][1].split("/")[-1] in errors[0]
