"""Output safety: a writer replaces only what recsys wrote before, refuses anything else with an
error naming the folder, leaves no temporary behind and removes the ones a killed run left.

Every case ends in a clean error or a correct result, and the user's files and the previous
outputs are byte-for-byte what they were.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backends.local.knn import FaissIndex
from recsys import _io
from recsys.cli import main
from recsys.errors import OutputError
from recsys.estimators import FMRegressor
from recsys.model import FittedFM
from tests.cli_helpers import cli_command, cli_env, run_cli

TINY = ["--preset", "tiny", "-q"]


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(cache_dir))


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def fm() -> FMRegressor:
    rng = np.random.default_rng(0)
    return FMRegressor(num_factors=3, epochs=1).fit(np.eye(12, dtype=np.float32), rng.random(12))


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(tiny_run, out)
    return out


# ---------------------------------------------------------------------------------------------
# the library's writers
# ---------------------------------------------------------------------------------------------
def test_estimator_save_refuses_a_folder_holding_the_users_files(fm: FMRegressor, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"mine holds files recsys did not write \(notes.txt\)"):
        fm.save(target)
    assert _snapshot(target) == {"notes.txt": b"keep me"}
    assert _hidden(tmp_path) == []


def test_estimator_save_refuses_an_existing_file(fm: FMRegressor, tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.write_text("keep me")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        fm.save(target)
    assert target.read_text() == "keep me"
    assert _hidden(tmp_path) == []  # nothing moved aside to a hidden .model.<random>.old


def test_save_replaces_its_own_output_but_not_a_file_added_to_it(fm: FMRegressor, tmp_path: Path) -> None:
    target = tmp_path / "model"
    fm.save(target)
    fm.set_params(epochs=2).fit(np.eye(12, dtype=np.float32), np.arange(12.0)).save(target)  # replaces
    np.testing.assert_allclose(FMRegressor.load(target).predict(np.eye(12)), fm.predict(np.eye(12)))
    (target / "README.txt").write_text("my notes about this model")
    before = _snapshot(target)
    with pytest.raises(OutputError, match=r"also holds files it did not write \(README.txt\)"):
        fm.save(target)
    assert _snapshot(target) == before


def test_a_writer_does_not_replace_another_kind_of_output(fm: FMRegressor, tmp_path: Path) -> None:
    knn = tmp_path / "knn"
    FaissIndex.build(np.eye(4, dtype=np.float32)).save(knn)
    before = _snapshot(knn)
    with pytest.raises(OutputError, match="holds a saved k-NN index; writing a saved factorization machine"):
        fm.save(knn)
    assert _snapshot(knn) == before


def test_links_and_paths_through_a_file_are_refused(fm: FMRegressor, tmp_path: Path) -> None:
    real = tmp_path / "real"
    fm.save(real)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        fm.save(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        fm.save(tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_text() == "x"


def test_a_folder_written_before_the_marker_existed_is_recognised_by_its_stamp(tmp_path: Path) -> None:
    target = tmp_path / "model"
    FittedFM(0.5, np.ones(3), np.ones((3, 2))).save(target)
    (target / _io.MARKER).unlink()  # as an older recsys wrote it
    FittedFM(1.5, np.ones(4), np.ones((4, 2))).save(target)
    assert FittedFM.load(target).w0 == 1.5


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale(parent: Path, name: str, pid: int, end: str = "tmp", host: str | None = None) -> Path:
    path = parent / f".{name}.recsys-{host or _io._HOST}-{pid}-0123abcd.{end}"
    path.mkdir()
    (path / "half-written.bin").write_bytes(b"x" * 1000)
    return path


def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    dead = _stale(tmp_path, "model", _dead_pid())
    alive = _stale(tmp_path, "model", os.getppid())  # a writer still running: left alone
    elsewhere = _stale(tmp_path, "model", _dead_pid(), host="ffffff")  # another machine's (shared disk)
    other_target = _stale(tmp_path, "other", _dead_pid())  # a killed run's, into another target
    other_alive = _stale(tmp_path, "other", os.getppid())
    other_aside = _stale(tmp_path, "other", _dead_pid(), end="old")  # put back when "other" is written
    users = tmp_path / ".model.mine.tmp"
    users.mkdir()  # not our naming
    FittedFM(0.5, np.ones(3), np.ones((3, 2))).save(tmp_path / "model")
    assert not dead.exists() and not other_target.exists()
    assert alive.exists() and elsewhere.exists() and other_alive.exists() and other_aside.exists()
    assert users.exists() and not (tmp_path / "other").exists()


def test_a_previous_output_moved_aside_by_a_killed_swap_is_put_back(tmp_path: Path) -> None:
    """Killed between the two renames of a swap: the target is missing and the previous output is
    the stale ``.old``. The next write puts it back before anything else (here the write fails)."""
    target = tmp_path / "model"
    FittedFM(0.5, np.ones(3), np.ones((3, 2))).save(target)
    before = _snapshot(target)
    aside = tmp_path / f".model.recsys-{_io._HOST}-{_dead_pid()}-0123abcd.old"
    target.rename(aside)
    with pytest.raises(RuntimeError, match="failed on purpose"):
        with _io.atomic_dir(target, kind="recsys.fm"):
            raise RuntimeError("failed on purpose")
    assert _snapshot(target) == before and _hidden(tmp_path) == []


def test_atomic_file_writes_refuse_a_folder(tmp_path: Path) -> None:
    (tmp_path / "report.html").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        _io.atomic_write_text(tmp_path / "report.html", "<html>")


# ---------------------------------------------------------------------------------------------
# the command line: run, train, eda
# ---------------------------------------------------------------------------------------------
def test_train_writes_to_its_own_folder_and_never_replaces_a_run(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_run, tmp_path / "recsys-output")
    before = _snapshot(tmp_path / "recsys-output")
    assert main(["train", *TINY]) == 0  # default --out
    assert (tmp_path / "recsys-train" / "models" / "regressor").is_dir()
    assert json.loads((tmp_path / "recsys-train" / _io.MARKER).read_text())["kind"] == "recsys.train"
    assert main(["train", *TINY, "--out", "recsys-output"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "holds the output of `recsys run`" in err and "recsys-output" in err
    assert _snapshot(tmp_path / "recsys-output") == before
    # a full run may replace a train output
    assert main(["run", *TINY, "--out", "recsys-train", "-k", "5"]) == 0
    assert (tmp_path / "recsys-train" / "report.html").is_file()
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("case", ["file", "file/sub", "dot in a run", "user folder"])
def test_eda_out_that_cannot_be_replaced(
    case: str, run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.csv").write_text("1,2\n")
    out, cwd = {"file": ("file", tmp_path), "file/sub": ("file/sub", tmp_path), "dot in a run": (".", run_copy),
                "user folder": ("mine", tmp_path)}[case]  # fmt: skip
    before = _snapshot(tmp_path)
    monkeypatch.chdir(cwd)
    assert main(["eda", *TINY, "--out", out]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    assert {"file": "is a file, not a folder", "file/sub": "file is a file, not a folder",
            "dot in a run": "is the current folder", "user folder": "holds files recsys did not write (a.csv)"}[case] \
        in errors[0]  # fmt: skip
    assert _snapshot(tmp_path) == before  # no temporary folder anywhere, nothing changed


def test_a_write_failure_keeps_the_previous_output(run_copy: Path, cache_dir: Path) -> None:
    """A file-size limit (as a full disk would) stops the write of report.html (~0.5 MB)."""
    before = _snapshot(run_copy)
    limit = "import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))"
    proc = run_cli("run", *TINY, "-k", "7", "--out", str(run_copy), cache=cache_dir, preexec=limit)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"could not write {run_copy}" in errors[0] and "file-size limit" in errors[0]
    assert _snapshot(run_copy) == before
    assert _hidden(run_copy.parent) == []


# ---------------------------------------------------------------------------------------------
# signals: a real process, a real signal, while the outputs are being written
# ---------------------------------------------------------------------------------------------
def _signal_while_writing(out: Path, sig: int, cache: Path) -> tuple[subprocess.Popen[str], str, dict[str, bytes]]:
    """Run into ``out`` and send ``sig`` once the output write has begun: the process, its
    stderr and the snapshot of ``out`` taken before. On a loaded machine the run can finish
    between its temporary showing up and the signal (exit 0, ``out`` replaced): up to 3 tries."""
    for _ in range(3):
        before = _snapshot(out)
        proc = subprocess.Popen(cli_command("run", *TINY, "-k", "9", "--out", str(out)), env=cli_env(cache),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        pattern = f".{out.name}.recsys-*-{proc.pid}-*.tmp"
        while not list(out.parent.glob(pattern)):  # the write has started
            assert proc.poll() is None, f"finished before writing: {proc.stderr.read() if proc.stderr else ''}"
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
    return proc, err, before


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_leave_the_previous_output_and_no_temporary(
    sig: int, code: int, run_copy: Path, cache_dir: Path
) -> None:
    proc, err, before = _signal_while_writing(run_copy, sig, cache_dir)
    assert proc.returncode == code, err
    assert "no outputs were left half-written" in err and "Traceback" not in err
    assert _snapshot(run_copy) == before
    assert _hidden(run_copy.parent) == []


def test_the_temporary_of_a_killed_run_is_removed_by_the_next_write(run_copy: Path, cache_dir: Path) -> None:
    proc, _, before = _signal_while_writing(run_copy, signal.SIGKILL, cache_dir)
    assert proc.returncode == -signal.SIGKILL
    left = _hidden(run_copy.parent)
    assert len(left) == 1 and left[0].endswith(".tmp") and f"-{proc.pid}-" in left[0]
    assert _snapshot(run_copy) == before
    assert main(["run", *TINY, "-k", "9", "--out", str(run_copy)]) == 0
    assert _hidden(run_copy.parent) == []
    assert json.loads((run_copy / "run.json").read_text())["k"] == 9
