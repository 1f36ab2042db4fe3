"""Benchmark the data pipeline: generate, load, prepare+split+encode, against the lab's approach.

Usage::

    python benchmarks/bench_data.py                      # full preset, seed 0, temp dir
    python benchmarks/bench_data.py --preset default --lab-sample 50000 --gz
    python benchmarks/bench_data.py --workdir /tmp/bench --keep --reuse   # keep/reuse the TSV

Every measured stage runs in a fresh Python process (this script re-invoked with a hidden
``--stage`` argument), so its peak memory is its own: the child reads its high-water mark
``VmHWM`` from ``/proc/self/status``, and resets it between sub-stages through
``/proc/self/clear_refs`` for per-sub-stage peaks. (``ru_maxrss`` is recorded too, but on Linux
it survives ``execve`` and may carry the spawning process's peak.) The parent also samples each
child's RSS with psutil as a cross-check.

Stages
------
generate      ``generate_reviews(preset, seed)``, then ``write_reviews_tsv`` (and ``.tsv.gz``
              with ``--gz``).
load          ``load_amazon_reviews(tsv)`` only: blocks of lines parsed by ``pyarrow.csv``.
scanner_load  the same call on the loader it replaced, a hand-written numpy byte scanner
              (Arrow parsed only the lines the scanner had validated), taken from git at
              ``--scanner-commit`` (the last commit that had it) and imported from a temporary
              file. Run alternately with ``load`` (``--repeat`` pairs), same file; both record a
              digest of the frame, which must agree.
pipeline      ``load_amazon_reviews`` -> ``prepare(frame, PrepareConfig())`` (dedupe, long-tail
              filter, index, leave-last-out split) -> train and test design matrices and
              labels. The floors apply to this process: <= 60 s and <= 6 GB peak RSS.
pandas_read   the lab's reader: ``pd.read_csv(tsv, sep="\\t", on_bad_lines="skip")`` with
              every other option at its default (``error_bad_lines=False`` in old pandas).
              Also with ``future.infer_string=False`` (object strings, as pandas < 3 did)
              unless ``--no-object-strings``.
lab_encode    on the prepared data: the lab's ``lil_matrix`` + ``df.iterrows()`` loop on the
              first ``--lab-sample`` training rows, then ``.tocsr()``, against our vectorised
              :func:`recsys.data.prepare.one_hot` (+ ``labels``) on the same rows and on all
              training rows. The outputs are checked to be equal.

Prints a markdown table and the floors, and writes JSON (atomically) to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

GB = 1e9  # decimal gigabytes: the stricter reading of "6 GB"
FLOOR_SECONDS = 60.0
FLOOR_PEAK_GB = 6.0
FLOOR_ENCODE_RATIO = 100.0
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_data.json"
#: The last commit with the hand-written byte scanner (recsys/data/loaders.py, one module).
SCANNER_COMMIT = "83fc4f025a30c615700c32154316fe8c1317b85a"


# --------------------------------------------------------------------------------------------
# Memory of the current process
# --------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            m = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def peak_bytes() -> int:
    """High-water RSS of this process since start (or since the last :func:`reset_peak`)."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return kb * 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class Peaks:
    """Per-sub-stage peak RSS inside one process: ``mark(name)`` closes the current phase."""

    def __init__(self) -> None:
        self.resettable = reset_peak()
        self.phases: dict[str, int] = {}

    def mark(self, name: str) -> None:
        self.phases[name] = peak_bytes()
        if self.resettable:
            reset_peak()

    @property
    def overall(self) -> int:
        return max([peak_bytes(), *self.phases.values()])


# --------------------------------------------------------------------------------------------
# The lab's approach
# --------------------------------------------------------------------------------------------


def lab_encode(df, n_users: int, n_items: int):
    """The lab's encoding, as written in its notebook: a float32 ``lil_matrix`` filled in a
    Python loop over ``df.iterrows()``, labels appended to a list, then CSR."""
    import numpy as np
    from scipy.sparse import lil_matrix

    X = lil_matrix((len(df), n_users + n_items)).astype("float32")
    Y = []
    line = 0
    for _index, row in df.iterrows():
        X[line, row["user"]] = 1
        X[line, n_users + row["item"]] = 1
        Y.append(row["star_rating"])
        line = line + 1
    Y = np.array(Y).astype("float32")
    return X.tocsr(), Y


# --------------------------------------------------------------------------------------------
# Stages (run in a child process)
# --------------------------------------------------------------------------------------------


def stage_generate(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.data.synthetic import generate_reviews, write_reviews_tsv

    peaks = Peaks()
    t0 = time.perf_counter()
    df = generate_reviews(args.preset, seed=args.seed)
    t_gen = time.perf_counter() - t0
    peaks.mark("generate")
    out: dict[str, Any] = {"rows": len(df), "generate_s": t_gen}
    t0 = time.perf_counter()
    info = write_reviews_tsv(df, args.path, seed=args.seed)
    out["write_s"] = time.perf_counter() - t0
    peaks.mark("write")
    out.update(
        lines=info.n_lines,
        malformed_lines=len(info.malformed_line_numbers),
        non_utf8_lines=len(info.non_utf8_line_numbers),
        bytes=Path(args.path).stat().st_size,
    )
    if args.gz_path:
        t0 = time.perf_counter()
        write_reviews_tsv(df, args.gz_path, seed=args.seed)
        out["write_gz_s"] = time.perf_counter() - t0
        out["gz_bytes"] = Path(args.gz_path).stat().st_size
        peaks.mark("write_gz")
    out["peak_phases"] = peaks.phases
    out["peak"] = peaks.overall
    return out


def stage_load(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.data.loaders import load_amazon_reviews

    return timed_load(load_amazon_reviews, args.path)


def timed_load(load_amazon_reviews, path: Path) -> dict[str, Any]:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    frame, report = load_amazon_reviews(path)
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        # CPU seconds of all threads: less sensitive than wall time to other jobs on the machine
        "cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
        "peak": peak_bytes(),
        "rows": report.rows_read,
        "lines": report.lines_read,
        "skipped": report.rows_skipped,
        "skip_reasons": report.skip_reasons,
        "frame_bytes": int(frame.memory_usage(deep=True).sum()),
        "frame_digest": frame_digest(frame),
    }


def frame_digest(frame) -> str:
    """A digest of a ratings frame's values (ids and titles as text)."""
    import hashlib

    import pandas as pd

    h = hashlib.sha256()
    for name in frame.columns:
        col = frame[name]
        if not pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_datetime64_dtype(col):
            col = col.astype(object).where(col.notna(), None).astype(str)
        h.update(pd.util.hash_pandas_object(col, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def stage_scanner_load(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    source = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "show",
         f"{args.scanner_commit}:recsys/data/loaders.py"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="recsys-scanner-") as tmp:
        module_path = Path(tmp) / "scanner_loaders.py"
        module_path.write_bytes(source)
        # named inside recsys.data so that its relative imports (..errors, .schema) resolve
        spec = importlib.util.spec_from_file_location("recsys.data._scanner_loaders", module_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return {**timed_load(module.load_amazon_reviews, args.path), "commit": args.scanner_commit}


def stage_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.data.loaders import load_amazon_reviews
    from recsys.data.prepare import PrepareConfig, prepare

    peaks = Peaks()
    t0 = time.perf_counter()
    frame, report = load_amazon_reviews(args.path)
    t1 = time.perf_counter()
    peaks.mark("load")
    data = prepare(frame, PrepareConfig())
    t2 = time.perf_counter()
    peaks.mark("prepare")
    X_train, X_test = data.design_matrix("train"), data.design_matrix("test")
    y_train, y_test = data.labels("train"), data.labels("test")
    t3 = time.perf_counter()
    peaks.mark("encode")
    return {
        "seconds": t3 - t0,
        "load_s": t1 - t0,
        "prepare_s": t2 - t1,
        "encode_s": t3 - t2,
        "peak": peaks.overall,
        "peak_phases": peaks.phases,
        "peak_resettable": peaks.resettable,
        "ru_maxrss": ru_maxrss_bytes(),
        "rows": report.rows_read,
        "lines": report.lines_read,
        "train_rows": X_train.shape[0],
        "test_rows": X_test.shape[0],
        "feature_dim": X_train.shape[1],
        "users": data.n_users,
        "items": data.n_items,
        "labels_ok": bool(len(y_train) == X_train.shape[0] and len(y_test) == X_test.shape[0]),
        "prepare_report": data.report.to_dict(),
    }


def stage_pandas_read(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    if args.object_strings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pd.set_option("future.infer_string", False)
    defaults_error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        try:
            df = pd.read_csv(args.path, sep="\t", on_bad_lines="skip")
            encoding_errors = "strict"
        except UnicodeDecodeError as exc:
            # Pure defaults stop at the first non-UTF-8 byte. The smallest change that reads
            # the file: replace undecodable bytes (what our loader does, too).
            defaults_error = {
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds_to_failure": time.perf_counter() - t0,
            }
            del exc
            t0 = time.perf_counter()
            df = pd.read_csv(args.path, sep="\t", on_bad_lines="skip", encoding_errors="replace")
            encoding_errors = "replace"
        seconds = time.perf_counter() - t0
    peak = peak_bytes()
    # What the default quoting and bad-line handling did (after the timing).
    stars = pd.to_numeric(df["star_rating"], errors="coerce")
    text_cols = [c for c in ("product_title", "review_headline", "review_body") if c in df]
    swallowed = np.zeros(len(df), dtype=bool)
    for c in text_cols:
        s = df[c].astype("object")
        swallowed |= s.map(lambda v: isinstance(v, str) and ("\n" in v or "\t" in v)).to_numpy()
    with open(args.path, "rb") as fh:
        raw = fh.read() if not str(args.path).endswith(".gz") else b""
    return {
        "seconds": seconds,
        "peak": peak,
        "rows": len(df),
        # deep memory_usage counts a str object shared by several rows once per row
        "frame_bytes_deep": int(df.memory_usage(deep=True).sum()),
        "dtypes": {c: str(df[c].dtype) for c in ("customer_id", "product_id", "star_rating")},
        "rows_bad_star_rating": int((~stars.isin([1, 2, 3, 4, 5])).sum()),
        "rows_with_embedded_newline_or_tab": int(swallowed.sum()),
        "fields_starting_with_quote_in_file": raw.count(b'\t"'),
        "fields_starting_with_quote_after_parse": int(
            sum(
                df[c].astype("object").map(lambda v: isinstance(v, str) and v.startswith('"')).sum()
                for c in text_cols
            )
        ),
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught}),
        "object_strings": bool(args.object_strings),
        "defaults_failed": defaults_error,
        "encoding_errors": encoding_errors,
    }


def _timed(fn, repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def stage_lab_encode(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from recsys.data.loaders import load_amazon_reviews
    from recsys.data.prepare import PrepareConfig, labels, one_hot, prepare

    frame, _ = load_amazon_reviews(args.path)
    data = prepare(frame, PrepareConfig())
    del frame
    n_users, n_items = data.n_users, data.n_items
    sample = data.train.iloc[: args.lab_sample]
    n = len(sample)

    def ours(part):
        def run():
            X = one_hot(part["user"].to_numpy(), part["item"].to_numpy(), n_users, n_items)
            return X, labels(part["star_rating"].to_numpy())

        return run

    lab_times, (X_lab, y_lab) = _timed(
        lambda: lab_encode(sample, n_users, n_items), args.lab_repeat
    )
    our_times, (X_our, y_our) = _timed(ours(sample), args.lab_repeat)
    same = X_lab.shape == X_our.shape and (X_lab != X_our).nnz == 0 and np.array_equal(y_lab, y_our)
    all_times, (X_all, _) = _timed(ours(data.train), args.lab_repeat)
    return {
        "rows": n,
        "all_rows": X_all.shape[0],
        "feature_dim": n_users + n_items,
        "lab_s": lab_times,
        "ours_s": our_times,
        "ours_all_s": all_times,
        "outputs_equal": bool(same),
        "lab_dtype": str(X_lab.dtype),
        "peak": peak_bytes(),
    }


STAGES = {
    "generate": stage_generate,
    "load": stage_load,
    "scanner_load": stage_scanner_load,
    "pipeline": stage_pipeline,
    "pandas_read": stage_pandas_read,
    "lab_encode": stage_lab_encode,
}


# --------------------------------------------------------------------------------------------
# Orchestration (parent process)
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import scipy

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            m = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            m = re.search(r"^MemTotal:\s+(\d+) kB", fh.read(), re.M)
            mem = int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "ram_gb": round(mem / GB, 1) if mem else None,
        "ram_gib": round(mem / 2**30, 1) if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "scipy": scipy.__version__,
    }


def run_watched(cmd: list[str], out_path: Path, name: str) -> dict[str, Any]:
    """Run a stage command that writes its JSON result to ``out_path``; return that result
    plus the parent's view: wall time, the child's RSS sampled every 50 ms with psutil, and
    the load average before and after."""
    import psutil

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    sampled = 0
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                sampled = max(sampled, ps.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
    finally:
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        out_path.unlink(missing_ok=True)
        raise SystemExit(f"stage {name} failed with exit code {rc}: {' '.join(cmd)}")
    result = json.loads(out_path.read_text())
    out_path.unlink()
    result.update(
        process_wall_s=wall,
        sampled_peak=sampled,
        loadavg_before=list(load_before),
        loadavg_after=list(os.getloadavg()),
    )
    return result


def run_stage(name: str, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Run one stage in a fresh interpreter; return its JSON result plus parent-side checks."""

    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".json", delete=False) as fh:
        out_path = Path(fh.name)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--stage",
        name,
        "--stage-out",
        str(out_path),
        "--preset",
        args.preset,
        "--seed",
        str(args.seed),
        "--lab-sample",
        str(args.lab_sample),
        "--lab-repeat",
        str(args.lab_repeat),
        "--scanner-commit",
        args.scanner_commit,
    ]
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value not in (None, False):
            cmd += [flag, str(value)]
    result = run_watched(cmd, out_path, name)
    result["loadavg_before"] = result["loadavg_before"][0]
    shown = " ".join(
        f"{k}={Path(v).name if isinstance(v, Path) else v}" for k, v in extra.items() if v
    )
    print(f"  {name} {shown}: {result['process_wall_s']:.1f} s", file=sys.stderr, flush=True)
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "all": values}


def _repeat(name: str, args: argparse.Namespace, n: int, **extra: Any) -> dict[str, Any]:
    return _summarise([run_stage(name, args, **extra) for _ in range(n)])


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(runs)
    out = dict(runs[-1])
    for key in ("seconds", "cpu_s", "load_s", "prepare_s", "encode_s"):
        if key in runs[0]:
            out[key] = _stats([r[key] for r in runs])
    out["peak"] = max(r["peak"] for r in runs)
    out["sampled_peak"] = max(r["sampled_peak"] for r in runs)
    if "peak_phases" in runs[0]:
        out["peak_phases"] = {
            k: max(r["peak_phases"][k] for r in runs) for k in runs[0]["peak_phases"]
        }
    out["repeats"] = n
    return out


def _fmt_s(s: dict[str, float] | float) -> str:
    if isinstance(s, dict):
        if len(s["all"]) == 1:
            return f"{s['min']:.3g}" if s["min"] < 0.1 else f"{s['min']:.2f}"
        fmt = "{:.3g}" if s["min"] < 0.1 else "{:.2f}"
        return f"{fmt.format(s['min'])} / {fmt.format(s['median'])}"
    return f"{s:.3g}" if s < 0.1 else f"{s:.2f}"


def _med(s: dict[str, float] | float) -> float:
    return s["median"] if isinstance(s, dict) else s


def _min(s: dict[str, float] | float) -> float:
    return s["min"] if isinstance(s, dict) else s


def build_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    rows = []

    def add(stage, seconds, peak, n, note=""):
        rate = (
            f"{n / _med(seconds):,.0f}" if n and seconds is not None and _med(seconds) > 0 else ""
        )
        rows.append(
            (
                stage,
                _fmt_s(seconds) if seconds is not None else "",
                f"{peak / GB:.2f}" if peak else "",
                f"{n:,}" if n else "",
                rate,
                note,
            )
        )

    gen = res.get("generate")
    if gen:
        ph = gen["peak_phases"]
        add("generate_reviews", gen["generate_s"], ph["generate"], gen["rows"], "in-memory frame")
        add(
            "write_reviews_tsv (.tsv)",
            gen["write_s"],
            ph["write"],
            gen["lines"],
            f"{gen['bytes'] / 2**20:,.0f} MiB; {gen['malformed_lines']} malformed lines",
        )
        if "write_gz_s" in gen:
            add(
                "write_reviews_tsv (.tsv.gz)",
                gen["write_gz_s"],
                ph["write_gz"],
                gen["lines"],
                f"{gen['gz_bytes'] / 2**20:,.0f} MiB",
            )
    load = res["load"]
    add(
        "load_amazon_reviews (ours)",
        load["seconds"],
        load["peak"],
        load["lines"],
        f"{load['rows']:,} rows kept, {load['skipped']} skipped; frame {load['frame_bytes'] / GB:.2f} GB",
    )
    if "scanner_load" in res:
        sc = res["scanner_load"]
        same = "identical" if sc["frame_digest"] == load["frame_digest"] else "DIFFERENT"
        add("load_amazon_reviews, byte scanner (replaced)", sc["seconds"], sc["peak"], sc["lines"],
            f"commit {sc['commit'][:10]}; frame {same}")  # fmt: skip
    if "load_gz" in res:
        g = res["load_gz"]
        add(
            "load_amazon_reviews (.tsv.gz)",
            g["seconds"],
            g["peak"],
            g["lines"],
            f"{g['rows']:,} rows kept",
        )
    pipe = res["pipeline"]
    ph = pipe["peak_phases"]
    add(
        "**load+prepare+encode (ours, one process)**",
        pipe["seconds"],
        pipe["peak"],
        pipe["lines"],
        f"train {pipe['train_rows']:,} x {pipe['feature_dim']:,}, test {pipe['test_rows']:,}",
    )
    add("  - load", pipe["load_s"], ph["load"], pipe["lines"])
    rep = pipe["prepare_report"]
    add(
        "  - prepare (dedupe, filter, index, split)",
        pipe["prepare_s"],
        ph["prepare"],
        rep["rows_in"],
        f"{rep['rows_after_filter']:,} ratings after filter",
    )
    add(
        "  - encode (train+test CSR + labels)",
        pipe["encode_s"],
        ph["encode"],
        pipe["train_rows"] + pipe["test_rows"],
    )
    for key, label in (
        ("pandas_read", "pandas read_csv, defaults (lab)"),
        ("pandas_read_object", "pandas read_csv, object strings (lab, pandas<3)"),
    ):
        if key in res:
            p = res[key]
            kept_bad = p["rows"] - res["load"]["rows"]
            note = (
                f"{p['rows']:,} rows obtained: {kept_bad:+,} vs ours, "
                f"{p['rows_bad_star_rating']} with a bad star_rating (dtype {p['dtypes']['star_rating']}); "
                f"{p['fields_starting_with_quote_in_file'] - p['fields_starting_with_quote_after_parse']:,} "
                f"quoted fields unquoted"
            )
            if p.get("defaults_failed"):
                note += (
                    f"; pure defaults raise UnicodeDecodeError after "
                    f"{p['defaults_failed']['seconds_to_failure']:.1f} s, timed with "
                    f"encoding_errors='replace'"
                )
            add(label, p["seconds"], p["peak"], p["rows"], note)
    lab = res["lab_encode"]
    add(
        f"lab encode: iterrows + lil_matrix -> CSR, first {lab['rows']:,} train rows",
        _stats(lab["lab_s"]),
        None,
        lab["rows"],
        "outputs equal" if lab["outputs_equal"] else "OUTPUTS DIFFER",
    )
    add("ours: one_hot + labels, same rows", _stats(lab["ours_s"]), None, lab["rows"])
    add("ours: one_hot + labels, all train rows", _stats(lab["ours_all_s"]), None, lab["all_rows"])
    return rows


def floors(res: dict[str, Any]) -> list[dict[str, Any]]:
    pipe, lab = res["pipeline"], res["lab_encode"]
    t = _med(pipe["seconds"])
    lab_rate = lab["rows"] / statistics.median(lab["lab_s"])
    our_rate = lab["rows"] / statistics.median(lab["ours_s"])
    ratio = our_rate / lab_rate
    return [
        {
            "floor": f"load+prepare+encode <= {FLOOR_SECONDS:g} s",
            "measured": round(t, 2),
            "pass": t <= FLOOR_SECONDS,
        },
        {
            "floor": f"load+prepare+encode peak RSS <= {FLOOR_PEAK_GB:g} GB",
            "measured": round(pipe["peak"] / GB, 2),
            "pass": pipe["peak"] <= FLOOR_PEAK_GB * GB,
        },
        {
            "floor": f"encoding >= {FLOOR_ENCODE_RATIO:g}x the lab's per-row approach (same rows)",
            "measured": round(ratio, 1),
            "pass": ratio >= FLOOR_ENCODE_RATIO,
        },
    ]


def ratios(res: dict[str, Any]) -> dict[str, float]:
    out = {}
    lab = res["lab_encode"]
    out["encode_speedup_vs_lab_median"] = statistics.median(lab["lab_s"]) / statistics.median(
        lab["ours_s"]
    )
    out["encode_speedup_vs_lab_best"] = min(lab["lab_s"]) / min(lab["ours_s"])
    ld = res["load"]
    if "scanner_load" in res:
        sc = res["scanner_load"]
        out["load_time_pyarrow_over_scanner_median"] = _med(ld["seconds"]) / _med(sc["seconds"])
        out["load_time_pyarrow_over_scanner_best"] = _min(ld["seconds"]) / _min(sc["seconds"])
        out["load_peak_pyarrow_over_scanner"] = ld["peak"] / sc["peak"]
        out["load_cpu_pyarrow_over_scanner_median"] = _med(ld["cpu_s"]) / _med(sc["cpu_s"])
    for key, suffix in (("pandas_read", ""), ("pandas_read_object", "_object")):
        if key in res:
            p = res[key]
            out[f"load_speedup_vs_pandas_read_csv{suffix}_median"] = _med(p["seconds"]) / _med(
                ld["seconds"]
            )
            out[f"load_speedup_vs_pandas_read_csv{suffix}_best"] = _min(p["seconds"]) / _min(
                ld["seconds"]
            )
            out[f"load_peak_ratio_pandas{suffix}_over_ours"] = p["peak"] / ld["peak"]
    return out


def print_report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(
        f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB ({m['ram_gib']} GiB) RAM; Python {m['python']}, "
        f"numpy {m['numpy']}, pandas {m['pandas']}, pyarrow {m['pyarrow']}, scipy {m['scipy']}"
    )
    d = res["data"]
    print(
        f"Data: preset {d['preset']!r}, seed {d['seed']}, {d['bytes'] / 2**20:,.0f} MiB TSV, "
        f"{d['lines']:,} data lines\n"
    )
    header = ("stage", "seconds (min / median)", "peak RSS GB", "rows", "rows/s", "notes")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * len(header)) + "|")
    for row in res["table"]:
        print("| " + " | ".join(row) + " |")
    print()
    for key, value in res["ratios"].items():
        print(f"{key}: {value:,.2f}x")
    if "scanner_load" in res:
        ratio = res["ratios"]["load_time_pyarrow_over_scanner_median"]
        same = res["scanner_load"]["frame_digest"] == res["load"]["frame_digest"]
        print(
            f"pyarrow.csv loader vs the byte scanner: {ratio:.2f}x the time (median), "
            f"{'within' if ratio <= 1.5 else 'NOT within'} 1.5x; frames "
            f"{'identical' if same else 'DIFFERENT'}"
        )
    for key in ("pandas_read", "pandas_read_object"):
        if key in res:
            p = res[key]
            print(
                f"{key}: {p['rows']:,} rows vs ours {res['load']['rows']:,} "
                f"(file: {res['load']['lines']:,} data lines); bad star_rating kept: "
                f"{p['rows_bad_star_rating']}; rows with an embedded newline/tab (swallowed lines): "
                f"{p['rows_with_embedded_newline_or_tab']}; fields starting with '\"' in the file: "
                f"{p['fields_starting_with_quote_in_file']:,}; dtypes {p['dtypes']}"
            )
    print()
    for f in res["floors"]:
        print(f"{'PASS' if f['pass'] else 'FAIL'}  {f['floor']}: measured {f['measured']}")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="full", help="synthetic preset: tiny, default, full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the TSV goes (default: a temp dir, deleted unless --keep)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="skip generation when the TSV (and .gz) already exist in --workdir",
    )
    parser.add_argument("--gz", action="store_true", help="also write and load the .tsv.gz")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each heavy stage")
    parser.add_argument(
        "--lab-sample",
        type=int,
        default=200_000,
        help="training rows encoded the lab's way (iterrows + lil_matrix)",
    )
    parser.add_argument("--lab-repeat", type=int, default=3, help="runs of the lab-sample encodes")
    parser.add_argument(
        "--no-pandas", action="store_true", help="skip pandas read_csv on the full file"
    )
    parser.add_argument(
        "--no-object-strings",
        action="store_true",
        help="skip the pandas read_csv run with object strings (pandas < 3 behaviour)",
    )
    parser.add_argument(
        "--scanner-commit",
        default=SCANNER_COMMIT,
        help="git commit whose recsys/data/loaders.py is the byte-scanner loader to compare",
    )
    parser.add_argument("--no-scanner", action="store_true", help="skip the scanner comparison")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    # hidden: child-process stages
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gz-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--object-strings", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.lab_repeat < 1 or args.lab_sample < 1:
        parser.error("--repeat, --lab-repeat and --lab-sample must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        result = STAGES[args.stage](args)
        args.stage_out.write_text(json.dumps(result))
        return 0

    tmp_dir = None
    if args.workdir is None:
        tmp_dir = Path(tempfile.mkdtemp(prefix="recsys-bench-data-"))
        workdir = tmp_dir
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    tsv = workdir / f"{args.preset}-seed{args.seed}.tsv"
    gz = workdir / f"{args.preset}-seed{args.seed}.tsv.gz" if args.gz else None
    res: dict[str, Any] = {
        "machine": machine_info(),
        "command": "python benchmarks/bench_data.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if not k.startswith("stage") and k not in ("path", "gz_path", "object_strings")
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        print(f"workdir {workdir}", file=sys.stderr)
        if not (args.reuse and tsv.exists() and (gz is None or gz.exists())):
            res["generate"] = run_stage("generate", args, path=tsv, gz_path=gz)
        if args.no_scanner:
            res["load"] = _repeat("load", args, args.repeat, path=tsv)
        else:  # alternately, so that both see the same machine load
            pairs = [
                (run_stage("load", args, path=tsv), run_stage("scanner_load", args, path=tsv))
                for _ in range(args.repeat)
            ]
            res["load"] = _summarise([a for a, _ in pairs])
            res["scanner_load"] = _summarise([b for _, b in pairs])
        if gz is not None:
            res["load_gz"] = _repeat("load", args, args.repeat, path=gz)
        res["pipeline"] = _repeat("pipeline", args, args.repeat, path=tsv)
        if not args.no_pandas:
            res["pandas_read"] = _repeat("pandas_read", args, args.repeat, path=tsv)
            if not args.no_object_strings:
                res["pandas_read_object"] = _repeat(
                    "pandas_read", args, args.repeat, path=tsv, object_strings=True
                )
        res["lab_encode"] = run_stage("lab_encode", args, path=tsv)
        res["data"] = {
            "preset": args.preset,
            "seed": args.seed,
            "bytes": tsv.stat().st_size,
            "gz_bytes": gz.stat().st_size if gz is not None else None,
            "lines": res["load"]["lines"],
            "rows_loaded": res["load"]["rows"],
        }
    finally:
        if tmp_dir is not None and not args.keep:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        elif args.keep or args.workdir is not None:
            print(f"kept {workdir}", file=sys.stderr)
    res["table"] = build_rows(res)
    res["ratios"] = ratios(res)
    res["floors"] = floors(res)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print_report(res)
    write_json(args.json, res)
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
