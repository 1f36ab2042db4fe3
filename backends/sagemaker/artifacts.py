"""SageMaker built-in algorithm artifacts, read and written offline with numpy only.

**Factorization Machines.** A training job writes ``model.tar.gz`` holding ``model_algo-1``, a
zip of ``params`` (an MXNet NDArray list, :mod:`backends.sagemaker.mxnet_ndarray`, with
``arg:w0_weight`` (1,), ``arg:w1_weight`` (feature_dim, 1), ``arg:v`` (feature_dim, num_factors)),
``symbol.json`` (the MXNet graph, output ``out``, label ``out_label``) and ``meta.json``
(training metadata, including ``training_parameters.feature_dim``).

That layout and those names come from public code that loads FM artifacts with MXNet (AWS
notebooks; one public loader also handles ``Linear_Plus_Bias_weight`` (1, feature_dim) /
``Linear_Plus_Bias_bias`` with ``v`` stored as (num_factors, feature_dim), accepted here too).
The rest of ``meta.json`` and the operators of SageMaker's ``symbol.json`` are not public: what
:func:`write_fm_model_tar` writes there is a reconstruction (an FM graph built with MXNet 1.9.1,
see ``tests/fixtures/make_mxnet_fixtures.py``). So readers require only the three weight arrays;
``meta.json`` and ``symbol.json`` are advisory (predictor type, hyperparameters), and anything
unexpected in them is a warning, never an error.

**k-NN.** Batch transform with ``accept="application/jsonlines; verbose=true"`` writes one JSON
object per query, ``{"predicted_label": ..., "labels": [...], "distances": [...]}`` (labels are
floats; the order of the neighbours is not relied on).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys._io import atomic_write_bytes
from recsys.errors import ModelFormatError
from recsys.model import FittedFM

from .mxnet_ndarray import LIST_MAGIC, read_ndarray_dict, write_ndarray_list

logger = logging.getLogger("recsys")

#: Largest archive member read into memory (params of a 10M-feature, 64-factor FM are ~2.6 GB).
MAX_ARTIFACT_BYTES = 8 * 1024**3
_MAX_JSON_BYTES = 64 * 1024**2
_ALGO_MEMBER = "model_algo-1"
_OUTPUT_OPS = {"LinearRegressionOutput": "regressor", "LogisticRegressionOutput": "binary_classifier"}
_PREDICTOR_TYPES = tuple(_OUTPUT_OPS.values())
_MXNET_VERSION = 10901  # the version MXNet 1.9.1 stamps into symbol.json
# What zipfile / tarfile / gzip raise on corrupt input besides their own error classes.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError, IndexError,
                   KeyError, NotImplementedError, RuntimeError, struct.error, UnicodeDecodeError)  # fmt: skip


# ---- locating the files inside an artifact ---------------------------------------------------
@dataclass
class _Files:
    params: bytes
    symbol: bytes | None
    meta: bytes | None
    origin: str


def _sniff(head: bytes) -> str:
    """A file's kind from its first 512 bytes: tar (gzipped or not), zip, params or unknown."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") == LIST_MAGIC:
        return "params"
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
        return "tar"
    return "unknown"


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise ModelFormatError(f"{what} is {size} bytes, more than the {limit}-byte limit for an artifact member; "
                               "pass a larger max_bytes if this is expected")  # fmt: skip


def _member(names: Any, name: str) -> str | None:
    """``name`` among a container's member ``names``, at the top or in a folder."""
    return name if name in names else next((n for n in names if n.rsplit("/", 1)[-1] == name), None)


def _bundle(names: Any, read: Callable[[str, int], bytes], origin: str, limit: int) -> _Files | None:
    """``params`` with the optional ``symbol.json`` and ``meta.json`` (an extracted model_algo-1)."""
    params = _member(names, "params")
    if params is None:
        return None
    data = read(params, limit)
    symbol, meta = (read(m, _MAX_JSON_BYTES) if (m := _member(names, n)) else None for n in ("symbol.json", "meta.json"))
    return _Files(data, symbol, meta, origin)


def _from_algo_bytes(data: bytes, origin: str, limit: int) -> _Files:
    kind = _sniff(data[:512])
    if kind == "params":  # some algorithms (PCA, k-means) store the NDArray file directly
        return _Files(data, None, None, origin)
    if kind != "zip":
        raise ModelFormatError(
            f"{origin} is neither a zip (SageMaker FM's model_algo-1) nor an MXNet NDArray file; "
            f"it starts with {data[:8]!r}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}

            def read(name: str, cap: int) -> bytes:
                _check_size(f"{origin}: {name}", infos[name].file_size, cap)
                with zf.open(infos[name]) as fh:
                    raw = fh.read(cap + 1)
                _check_size(f"{origin}: {name}", len(raw), cap)
                return raw

            files = _bundle(infos, read, origin, limit)
    except ModelFormatError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise ModelFormatError(f"{origin}: corrupt zip archive: {exc!r}") from exc
    if files is None:
        raise ModelFormatError(
            f"{origin} is a zip without a 'params' member (expected symbol.json, params, meta.json "
            f"as in SageMaker's model_algo-1); it holds {sorted(infos)[:20]}"
        )
    return files


def _from_tar(path: Path, limit: int) -> _Files:
    origin = str(path)
    try:
        with tarfile.open(path, mode="r:*") as tf:
            members = {m.name.removeprefix("./"): m for m in tf.getmembers() if m.isfile()}

            def read(name: str, cap: int) -> bytes:
                _check_size(f"{origin}: {members[name].name}", members[name].size, cap)
                return tf.extractfile(members[name]).read()  # isfile() members always extract

            algo = _member(members, _ALGO_MEMBER)
            if algo is None:
                candidates = [n for n in members if n.rsplit("/", 1)[-1].startswith("model_algo-")]
                algo = candidates[0] if len(candidates) == 1 else None
            if algo is not None:
                return _from_algo_bytes(read(algo, limit), f"{origin}:{members[algo].name}", limit)
            files = _bundle(members, read, origin, limit)  # an extracted model_algo-1 that was tarred again
            if files is None:
                raise ModelFormatError(f"{origin} has no '{_ALGO_MEMBER}' member (SageMaker's model.tar.gz layout); "
                                       f"its files are {sorted(members)[:20]}")  # fmt: skip
            return files
    except ModelFormatError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise ModelFormatError(f"{origin}: corrupt tar archive: {exc!r}") from exc


def _read_file(path: Path, limit: int) -> bytes:
    _check_size(str(path), path.stat().st_size, limit)
    return path.read_bytes()


def _locate(path: Path, limit: int) -> _Files:
    if path.is_dir():
        files = {p.name for p in path.iterdir() if p.is_file()}
        found = _bundle(files, lambda name, cap: _read_file(path / name, cap), str(path), limit)
        if found is not None:
            return found
        for name in (_ALGO_MEMBER, "model.tar.gz"):
            if name in files:
                return _locate(path / name, limit)
        raise ModelFormatError(f"{path} is a directory without 'params', '{_ALGO_MEMBER}' or 'model.tar.gz'; "
                               f"it holds {sorted(p.name for p in path.iterdir())[:20]}")  # fmt: skip
    if not path.is_file():
        raise ModelFormatError(f"no SageMaker model artifact at {path}: the path does not exist")
    with open(path, "rb") as fh:
        head = fh.read(512)
    kind = _sniff(head)
    if kind == "tar":
        return _from_tar(path, limit)
    if kind in ("zip", "params"):
        return _from_algo_bytes(_read_file(path, limit), str(path), limit)
    raise ModelFormatError(
        f"{path} is not a SageMaker model artifact: expected model.tar.gz, the model_algo-1 zip, an "
        f"extracted directory or an MXNet 'params' file; the file starts with {head[:8]!r}"
    )


# ---- interpreting the files ------------------------------------------------------------------
def _json(raw: bytes | None, what: str) -> Any:
    """Advisory JSON: None (with a warning) when it is not valid JSON."""
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        logger.warning("%s is not valid JSON (%s); ignoring it (the weights are read from params)", what, type(exc).__name__)
        return None


def _coerce(value: Any) -> Any:
    """SageMaker passes hyperparameters as strings; turn '7' / '0.01' / 'true' back into values."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _find_key(obj: Any, key: str, depth: int = 0) -> Any:
    if not isinstance(obj, dict) or depth > 4:
        return None
    if key in obj:
        return obj[key]
    return next((v for v in (_find_key(value, key, depth + 1) for value in obj.values()) if v is not None), None)


def _predictor_from_symbol(symbol: Any) -> str | None:
    if not isinstance(symbol, dict) or not isinstance(symbol.get("nodes"), list):
        return None
    found = {_OUTPUT_OPS[n["op"]] for n in symbol["nodes"] if isinstance(n, dict) and n.get("op") in _OUTPUT_OPS}
    return found.pop() if len(found) == 1 else None


def _resolve_predictor_type(meta: Any, symbol: Any, requested: str | None, origin: str) -> str:
    """``requested`` when given, else what meta.json / symbol.json record (advisory: a
    disagreement is a warning), else ``"regressor"`` with a warning."""
    if requested is not None and requested not in _PREDICTOR_TYPES:
        raise ModelFormatError(f"predictor_type must be 'regressor' or 'binary_classifier', got {requested!r}")
    raw = _find_key(meta, "predictor_type")
    recorded = {"meta.json": str(raw).strip().lower() if raw is not None else None,
                "symbol.json": _predictor_from_symbol(symbol)}  # fmt: skip
    known = {where: value for where, value in recorded.items() if value in _PREDICTOR_TYPES}
    for where, value in recorded.items():
        if value is not None and value not in _PREDICTOR_TYPES:
            logger.warning("%s: %s records predictor_type %r, which recsys does not know; ignoring it", origin, where, raw)
    chosen = requested or next(iter(known.values()), None)
    for where, value in known.items():
        if value != chosen:
            logger.warning("%s: %s says predictor_type %r but %r is used%s", origin, where, value, chosen,
                           " (as requested)" if requested else "")  # fmt: skip
    if chosen is None:
        logger.warning("%s: the artifact does not record its predictor_type (no meta.json or symbol.json); "
                       "assuming 'regressor'. Pass predictor_type= to be explicit.", origin)  # fmt: skip
    return chosen or "regressor"


def _fm_arrays(params: dict[str, np.ndarray], origin: str) -> tuple[float, np.ndarray, np.ndarray]:
    found = sorted(params)
    p = {n: params.get(f"arg:{n}", params.get(n))
         for n in ("w0_weight", "w1_weight", "v", "Linear_Plus_Bias_bias", "Linear_Plus_Bias_weight")}  # fmt: skip
    v = p["v"]
    if p["w0_weight"] is not None or p["w1_weight"] is not None:
        missing = [f"arg:{n}" for n in ("w0_weight", "w1_weight", "v") if p[n] is None]
        if missing:
            raise ModelFormatError(f"{origin}: FM params lack {missing}; the file has {found}")
        w0, w1 = p["w0_weight"], p["w1_weight"]
        if not (w1.ndim == 1 or (w1.ndim == 2 and w1.shape[1] == 1)):
            raise ModelFormatError(f"{origin}: w1_weight must have shape (feature_dim, 1), got {w1.shape}")
        w = w1.reshape(-1)
        if v.ndim != 2 or v.shape[0] != w.shape[0]:
            raise ModelFormatError(
                f"{origin}: v must have shape (feature_dim, num_factors) = ({w.shape[0]}, k), got {v.shape}"
            )
        V = v
    elif p["Linear_Plus_Bias_weight"] is not None:
        w0, lin_w = p["Linear_Plus_Bias_bias"], p["Linear_Plus_Bias_weight"]
        if w0 is None or v is None:
            raise ModelFormatError(f"{origin}: FM params with Linear_Plus_Bias_weight also need Linear_Plus_Bias_bias "
                                   f"and v; the file has {found}")  # fmt: skip
        if lin_w.ndim != 2 or lin_w.shape[0] != 1:
            raise ModelFormatError(f"{origin}: Linear_Plus_Bias_weight must be (1, feature_dim), got {lin_w.shape}")
        w, d = lin_w[0], lin_w.shape[1]
        if v.ndim == 2 and v.shape[1] == d:  # this naming stores v as (num_factors, feature_dim)
            V = v.T
        elif v.ndim == 2 and v.shape[0] == d:
            V = v
        else:
            raise ModelFormatError(f"{origin}: v must be (num_factors, {d}) or ({d}, num_factors), got {v.shape}")
    else:
        raise ModelFormatError(f"{origin}: no factorization machine parameters found; expected arg:w0_weight, "
                               f"arg:w1_weight and arg:v (SageMaker FM), the file has {found}")  # fmt: skip
    w0 = np.asarray(w0)
    if w0.size != 1:
        raise ModelFormatError(f"{origin}: the bias w0 must hold one value (shape (1,)), got shape {w0.shape}")
    for name, arr in (("w0", w0), ("w", w), ("V", V)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ModelFormatError(f"{origin}: FM parameter {name} has dtype {arr.dtype}, expected float")
        if not np.all(np.isfinite(arr)):
            raise ModelFormatError(
                f"{origin}: FM parameter {name} contains NaN or infinite values; the training job "
                "probably diverged (try lower bias_lr/linear_lr/factors_lr or a clip_gradient)"
            )
    return float(w0.reshape(-1)[0]), w, V


def read_fm_artifact(
    path: str | os.PathLike, *, predictor_type: str | None = None, n_users: int | None = None,
    n_items: int | None = None, max_bytes: int = MAX_ARTIFACT_BYTES,
) -> FittedFM:  # fmt: skip
    """Read a SageMaker Factorization Machines model into a :class:`~recsys.model.FittedFM`
    (archives are read in memory; nothing is extracted to disk).

    ``path`` is ``model.tar.gz`` as the training job wrote it, the ``model_algo-1`` zip inside
    it, a directory holding ``params`` (an extracted ``model_algo-1``) or ``model_algo-1`` /
    ``model.tar.gz``, or the raw ``params`` NDArray file. ``predictor_type`` defaults to what
    ``meta.json`` / ``symbol.json`` record (else ``"regressor"``, with a warning; a disagreement
    is a warning). ``n_users`` / ``n_items`` (the one-hot layout the model was trained on) go
    into ``metadata``. Members or files larger than ``max_bytes`` are refused.

    ``config`` is meta.json's ``training_parameters`` (numbers parsed) if present; ``metadata``
    is ``{"backend": "sagemaker", "source": str(path)}``. Raises :class:`ModelFormatError` for
    an unrecognised or corrupt file, missing weight arrays (the message lists the keys found),
    inconsistent shapes or non-finite values.
    """
    path = Path(path)
    files = _locate(path, max_bytes)
    params = read_ndarray_dict(files.params, source=f"{files.origin} (params)")
    w0, w, V = _fm_arrays(params, files.origin)
    meta = _json(files.meta, f"{files.origin}: meta.json")
    symbol = _json(files.symbol, f"{files.origin}: symbol.json")
    ptype = _resolve_predictor_type(meta, symbol, predictor_type, files.origin)

    config: dict[str, Any] = {}
    training = meta.get("training_parameters") if isinstance(meta, dict) else None
    if isinstance(training, dict):
        config = {str(k): _coerce(v) for k, v in training.items()}
        for key, actual in (("feature_dim", w.shape[0]), ("num_factors", V.shape[1])):
            if key in config and config[key] != actual:
                logger.warning("%s: meta.json says %s=%r but the weights have %d; using the weights",
                               files.origin, key, config[key], actual)  # fmt: skip
                config[key] = actual
    metadata: dict[str, Any] = {"backend": "sagemaker", "source": str(path)}
    for key, value in (("n_users", n_users), ("n_items", n_items)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ModelFormatError(f"{key} must be a non-negative int, got {value!r}")
            metadata[key] = int(value)
    if n_users is not None and n_items is not None and n_users + n_items > w.shape[0]:
        raise ModelFormatError(f"n_users + n_items = {n_users + n_items} exceeds the model's feature_dim {w.shape[0]}")
    return FittedFM(w0=w0, w=w, V=V, predictor_type=ptype, config=config, metadata=metadata)


# ---- writing ---------------------------------------------------------------------------------
def fm_symbol_json(feature_dim: int, num_factors: int, predictor_type: str = "regressor") -> str:
    """The FM graph as MXNet symbol JSON (what ``Symbol.tojson()`` of MXNet 1.9.1 gives for the
    graph in ``tests/fixtures/make_mxnet_fixtures.py``; equal as JSON, not byte for byte):
    ``y = w0 + x.w1 + 1/2 sum_f[(x V)_f^2 - (x^2 V^2)_f]``, output ``out`` (label ``out_label``)."""
    if predictor_type not in _PREDICTOR_TYPES:
        raise ModelFormatError(f"predictor_type must be 'regressor' or 'binary_classifier', got {predictor_type!r}")
    output_op = next(op for op, p in _OUTPUT_OPS.items() if p == predictor_type)
    nodes: list[dict[str, Any]] = []

    def node(op: str, name: str, inputs: tuple[int, ...] = (), attrs: dict[str, str] | None = None) -> int:
        nodes.append({"op": op, "name": name, **({"attrs": attrs} if attrs else {}), "inputs": [[i, 0, 0] for i in inputs]})
        return len(nodes) - 1

    def var(name: str, shape: tuple[int, ...] | None = None) -> int:
        return node("null", name, attrs={"__shape__": str(shape)} if shape else None)

    data = var("data")
    linear_dot = node("dot", "linear_dot", (data, var("w1_weight", (int(feature_dim), 1))))
    linear = node("broadcast_add", "linear", (linear_dot, var("w0_weight", (1,))))
    v = var("v", (int(feature_dim), int(num_factors)))
    xv_sq = node("square", "xv_sq", (node("dot", "xv", (data, v)),))
    x2v2 = node("dot", "x2v2", (node("square", "x_sq", (data,)), node("square", "v_sq", (v,))))
    pair_sum = node("sum", "pair_sum", (node("elemwise_sub", "pair_diff", (xv_sq, x2v2)),), {"axis": "1", "keepdims": "True"})
    score = node("elemwise_add", "score", (linear, node("_mul_scalar", "pairwise", (pair_sum,), {"scalar": "0.5"})))
    out = node(output_op, "out", (score, var("out_label")))
    graph = {
        "nodes": nodes,
        "arg_nodes": [i for i, n in enumerate(nodes) if n["op"] == "null"],
        "node_row_ptr": list(range(len(nodes) + 1)),
        "heads": [[out, 0, 0]],
        "attrs": {"mxnet_version": ["int", _MXNET_VERSION]},
    }
    return json.dumps(graph, indent=2)


def _hyperparameter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return str(value)
    return json.dumps(value, default=str)


def fm_model_tar_bytes(fm: FittedFM) -> bytes:
    """The bytes of :func:`write_fm_model_tar`'s ``model.tar.gz`` (e.g. to upload to a fake S3)."""
    params = write_ndarray_list({"arg:w0_weight": np.array([fm.w0], dtype=np.float32),
                                 "arg:w1_weight": np.asarray(fm.w, dtype=np.float32).reshape(-1, 1),
                                 "arg:v": np.asarray(fm.V, dtype=np.float32)})  # fmt: skip
    training = {str(k): _hyperparameter_text(v) for k, v in fm.config.items()}
    training.update(feature_dim=str(fm.feature_dim), num_factors=str(fm.num_factors), predictor_type=fm.predictor_type)
    meta = json.dumps({"training_parameters": training}, indent=2, sort_keys=True) + "\n"
    members = {"symbol.json": fm_symbol_json(fm.feature_dim, fm.num_factors, fm.predictor_type).encode(),
               "params": params, "meta.json": meta.encode()}  # fmt: skip
    algo = io.BytesIO()  # deterministic: fixed timestamps and member order
    with zipfile.ZipFile(algo, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, data)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
            info = tarfile.TarInfo(_ALGO_MEMBER)
            info.size, info.mtime, info.mode = len(algo.getvalue()), 0, 0o644
            tf.addfile(info, io.BytesIO(algo.getvalue()))
    return buf.getvalue()


def write_fm_model_tar(fm: FittedFM, path: str | os.PathLike) -> Path:
    """Write ``fm`` as a SageMaker FM ``model.tar.gz`` at ``path`` (parents created), atomically
    and deterministically. Parameters are stored as float32, as SageMaker does, so ``w0``
    round-trips as ``float(np.float32(fm.w0))``; ``fm.config`` goes into ``meta.json`` as string
    hyperparameters (``metadata`` is not stored: pass ``n_users`` / ``n_items`` to
    :func:`read_fm_artifact` again)."""
    return atomic_write_bytes(path, fm_model_tar_bytes(fm))


# ---- k-NN batch transform output -------------------------------------------------------------
def _knn_rows(text: str) -> list[Any]:
    stripped = text.strip()
    if stripped.startswith("{") and "\n" not in stripped:
        try:
            whole = json.loads(stripped)
        except (ValueError, RecursionError):
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("predictions"), list):
            return whole["predictions"]  # the verbose JSON (not JSON lines) response
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError) as exc:
                raise ModelFormatError(f"k-NN output line {lineno} is not valid JSON ({type(exc).__name__})") from exc
    return rows


def parse_knn_jsonlines(text_or_bytes: str | bytes, *, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse SageMaker k-NN batch-transform output (``accept="application/jsonlines; verbose=true"``;
    the verbose JSON form ``{"predictions": [...]}`` is accepted too) into ``labels`` (int64,
    -1 pads) and ``distances`` (float32, NaN pads) of shape (n_queries, k), neighbours in the
    order given; ``k`` defaults to the longest row.

    Raises :class:`ModelFormatError` for invalid JSON or UTF-8, non-verbose output (only
    ``predicted_label``), labels and distances of different lengths, non-integer labels, or a
    row longer than ``k``.
    """
    if isinstance(text_or_bytes, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text_or_bytes).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"k-NN output is not UTF-8 text: {exc}") from exc
    else:
        text = text_or_bytes
    label_rows, dist_rows = [], []
    for i, row in enumerate(_knn_rows(text)):
        if not isinstance(row, dict):
            raise ModelFormatError(f"k-NN output row {i} is {type(row).__name__}, expected a JSON object")
        if "labels" not in row or "distances" not in row:
            if "predicted_label" in row:
                raise ModelFormatError(
                    f"k-NN output row {i} has only 'predicted_label', not the neighbour 'labels' and "
                    "'distances': run the batch transform with accept='application/jsonlines; verbose=true'"
                )
            raise ModelFormatError(f"k-NN output row {i} lacks 'labels' and 'distances'")
        labels, dists = row["labels"], row["distances"]
        if not isinstance(labels, list) or not isinstance(dists, list) or len(labels) != len(dists):
            raise ModelFormatError(f"k-NN output row {i}: 'labels' and 'distances' must be lists of equal length")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels + dists):
            raise ModelFormatError(f"k-NN output row {i} has non-numeric labels or distances")
        try:
            lab = np.asarray(labels, dtype=np.float64)
            with np.errstate(over="ignore"):
                dist = np.asarray(dists, dtype=np.float64).astype(np.float32)
        except OverflowError as exc:
            raise ModelFormatError(f"k-NN output row {i} has a number too large for a float") from exc
        if lab.size and (not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)) or np.abs(lab).max() > 2**53):
            raise ModelFormatError(f"k-NN output row {i} has labels that are not integers")
        label_rows.append(lab.astype(np.int64))
        dist_rows.append(dist)
    width = max((r.size for r in label_rows), default=0) if k is None else int(k)
    too_long = next((i for i, r in enumerate(label_rows) if r.size > width), None)
    if too_long is not None:
        raise ModelFormatError(
            f"k-NN output row {too_long} has {label_rows[too_long].size} neighbours, more than k={width}"
        )
    labels_out = np.full((len(label_rows), width), -1, dtype=np.int64)
    dists_out = np.full((len(label_rows), width), np.nan, dtype=np.float32)
    for i, (lab, dist) in enumerate(zip(label_rows, dist_rows, strict=True)):
        labels_out[i, : lab.size], dists_out[i, : dist.size] = lab, dist
    return labels_out, dists_out
