"""Safe writes: atomic files and folders, and the rule that recsys replaces only what it wrote.

* A file or folder is written under a temporary name next to the target, then renamed onto it:
  a crash, an error, Ctrl-C or SIGTERM leaves either the old or the new content at the target.
* Every folder recsys writes carries a marker file, ``.recsys``, naming its kind and the files
  recsys put there. A writer replaces a folder only when it is absent, empty, or a recsys folder
  of a kind it may replace holding nothing but the listed files; anything else (a file, a link,
  the user's files, a full run under a writer of models only) raises
  :class:`~recsys.errors.OutputError` and nothing is touched.
* Temporaries are named ``.NAME.recsys-<host>-<pid>-<random>.tmp``; one left by a killed
  process is removed when the next write into the same folder starts.
* A failed write (disk full, file-size limit, no permission) raises ``OutputError`` naming the
  target and the fix; the previous content is intact and no temporary is left.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir",
           "check_replaceable", "MARKER", "to_json"]  # fmt: skip

log = logging.getLogger("recsys")

#: The marker file in every folder recsys writes.
MARKER = ".recsys"

#: What each kind of recsys folder is, for messages.
KINDS = {
    "recsys.run": "the output of `recsys run` (report, recommendations, k-NN index, models)",
    "recsys.train": "the output of `recsys train` (models only)",
    "recsys.eda": "the output of `recsys eda`",
    "recsys.fm": "a saved factorization machine",
    "recsys.knn.faiss": "a saved k-NN index",
}

_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMP = re.compile(r"^\.(?P<name>.+)\.recsys-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[^.]+)?\.(?P<end>tmp|old)$")
_WRITE_ERRNOS = {errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
#: Whether a write is in progress (nested writes go into its temporary folder).
_WRITING = contextvars.ContextVar("recsys_writing", default=False)


# temporary names and stale temporaries
def temp_path(target: Path, end: str, suffix: str = "") -> Path:
    return target.parent / f".{target.name}.recsys-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{suffix}.{end}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):
        pass  # someone else's process (or not ours to judge): leave its files alone
    return True


def remove_stale_temps(target: Path) -> None:
    """Remove the temporaries that earlier writes into ``target``'s folder left when their process
    died (this host only; whatever their target: a killed full-scale run leaves gigabytes). A
    ``.old`` folder -- the previous output moved aside in the instant before the new one took its
    place -- is left for its own target, and put back when that target is missing."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or m["host"] != _HOST or (m["end"] == "old" and m["name"] != target.name) \
                or _pid_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        if m["end"] == "old" and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.replace(path, target)
                log.warning("restored %s from %s (a write to it was interrupted)", target, path.name)
            continue
        _remove(path)
        log.info("removed %s, left by an interrupted recsys write (process %s)", path, m["pid"])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# what may be replaced
def _read_small_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} if it is missing, over 1 MiB, unreadable or not an object."""
    try:
        if path.is_file() and path.stat().st_size <= 1 << 20:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return doc if isinstance(doc, dict) else {}
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return {}


def _owner(folder: Path) -> tuple[str, set[str] | None] | None:
    """``(kind, files recsys wrote)`` of a folder recsys wrote, else None. Folders written
    before the marker existed are recognised by their format stamp (files then unknown)."""
    marker = _read_small_json(folder / MARKER)
    if isinstance(marker.get("kind"), str) and isinstance(marker.get("files"), list):
        return marker["kind"], {str(f) for f in marker["files"]}
    run = _read_small_json(folder / "run.json")
    if run.get("format") == "recsys.run":
        files = run["files"] if isinstance(run.get("files"), dict) else {}
        return ("recsys.run" if "report" in files or "recommendations" in files else "recsys.train"), None
    stamp = str(_read_small_json(folder / "config.json").get("format", ""))
    if stamp in KINDS:
        return stamp, None
    if {"source", "load", "exploration"} <= set(_read_small_json(folder / "exploration.json")):
        return "recsys.eda", None
    return None


def _files(folder: Path) -> list[str]:
    """Every file and link under ``folder`` (links to folders are not followed), sorted."""
    found = (p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())
    return sorted(p.relative_to(folder).as_posix() for p in found)


def _some(names: Collection[str], n: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_replaceable(path: str | os.PathLike, kind: str, replaces: Collection[str] | None = None) -> None:
    """Raise :class:`OutputError` unless a writer of ``kind`` may replace ``path`` as a whole:
    absent, an empty folder, or a recsys folder of a kind in ``replaces`` (default: ``kind``)
    holding only files recsys wrote."""
    path = Path(os.path.abspath(path))
    replaces = {kind} if replaces is None else set(replaces)
    what = KINDS.get(kind, kind)
    if path.parent == path:
        raise OutputError(f"cannot write {what} to {path}: choose a folder below it")
    blocker = next((p for p in path.parents if os.path.lexists(p)), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"cannot write {path}: {blocker} is a file, not a folder. Choose another path")
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; recsys does not replace links. Pass the folder it points to, or another path")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder; recsys writes {what} as a folder there and never replaces "
                          "a file. Choose another path (or move the file away)")  # fmt: skip
    try:
        cwd, real = Path.cwd().resolve(), path.resolve()
    except OSError:  # the current folder was deleted: it cannot be inside ``path``
        cwd = real = None
    if real is not None and (real == cwd or real in cwd.parents):
        raise OutputError(f"{path} is the current folder (or holds it); recsys replaces its output folder as a whole "
                              "and cannot do that from inside it. Run from another folder or choose another path")  # fmt: skip
    try:
        top = os.listdir(path)
    except OSError as exc:
        raise OutputError(f"cannot read {path} ({exc.strerror}); choose another path") from None
    if not top:
        return
    owner = _owner(path)
    if owner is None:
        raise OutputError(
            f"{path} holds files recsys did not write ({_some(top)}); recsys replaces its output folder as a whole, "
            "so it only ever replaces a folder it wrote. Choose a new or empty folder, or move those files out"
        )
    found, listed = owner
    if found not in replaces:
        raise OutputError(
            f"{path} holds {KINDS.get(found, found)}; writing {what} there would replace it. "
            "Choose another path (or remove that folder yourself if it is no longer needed)"
        )
    if listed is not None:
        extra = [f for f in _files(path) if f != MARKER and f not in listed]
        if extra:
            raise OutputError(
                f"{path} was written by recsys but now also holds files it did not write ({_some(extra)}); recsys "
                "replaces the folder as a whole. Move those files out, or choose another path"
            )


# failures
def _write_error(target: Path, tmp: Path, exc: OSError) -> OutputError:
    where = ""
    if exc.filename:
        name = str(exc.filename)
        where = f" (writing {os.path.relpath(name, tmp) if name.startswith(str(tmp)) else name})"
    fix = {
        errno.EFBIG: "a file-size limit (ulimit -f) stopped the write: raise it, or write elsewhere",
        errno.ENOSPC: "the disk is full: free some space, or write elsewhere",
        errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    }.get(exc.errno or 0, "choose a folder you can write to")
    return OutputError(f"could not write {target}: {exc.strerror or exc}{where}; {fix}. "
                       f"Nothing at {target} was changed")  # fmt: skip


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A temporary name next to ``target`` (folder created, stale temporaries removed), removed if
    the body fails in any way. A failed write (disk full, file-size limit, permissions) becomes one
    ``OutputError`` naming ``target``, at the outermost write."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), target.parent)
        raise OutputError(f"cannot write {target}: {blocker} is a file, not a folder. Choose another path") from None
    except OSError as exc:
        raise OutputError(f"cannot create the folder {target.parent} ({exc.strerror}); choose another path") from None
    remove_stale_temps(target)
    tmp = temp_path(target, "tmp")
    token = None if _WRITING.get() else _WRITING.set(True)
    try:
        yield tmp
    except BaseException as exc:
        _remove(tmp)
        if token is not None and isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _write_error(target, tmp, exc) from None
        raise
    finally:
        if token is not None:
            _WRITING.reset(token)


# files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception the temporary is removed and ``path`` is left untouched. A folder at ``path``
    is refused.
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise OutputError(f"{path} is a folder; cannot write a file there. Choose another path")
    with _temporary(path) as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
        yield tmp
        os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    import numpy as np
    import pandas as pd

    if obj is pd.NA or obj is pd.NaT:
        return None
    for kind, convert in ((np.integer, int), (np.floating, float), (np.ndarray, lambda a: a.tolist()), (Path, str),
                          (pd.Timestamp, pd.Timestamp.isoformat)):  # fmt: skip
        if isinstance(obj, kind):
            return convert(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_json(obj: Any) -> str:
    """JSON text for ``obj``; numpy scalars and arrays become plain numbers and lists."""
    return json.dumps(obj, indent=2, default=_json_default)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj) + "\n")


# folders
@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, kind: str, replaces: Collection[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path`` as a whole.

    ``kind`` (a key of :data:`KINDS`) and the files written are recorded in the marker file.
    :func:`check_replaceable` runs before and again after the body.
    """
    from . import __version__

    path = Path(os.path.abspath(path))
    check_replaceable(path, kind, replaces)
    with _temporary(path) as tmp:
        os.mkdir(tmp, 0o777)
        yield tmp
        files = [f for f in _files(tmp) if f != MARKER]
        doc = {"kind": kind, "recsys_version": __version__, "files": files}
        (tmp / MARKER).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        check_replaceable(path, kind, replaces)  # it may have changed while the body ran
        _swap(tmp, path)


def _swap(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path``, with SIGINT/SIGTERM held for the two renames (delivered right
    after), then delete the previous folder."""
    mask = getattr(signal, "pthread_sigmask", None)  # POSIX only
    previous = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if mask else None
    old = temp_path(path, "old") if os.path.lexists(path) else None
    try:
        if old is not None:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    finally:
        if mask:
            mask(signal.SIG_SETMASK, previous)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
