"""SageMaker's built-in FM inference protocol, in one place: the clients' encoding of requests
and decoding of answers (:mod:`recsys.serving.client`, :mod:`backends.sagemaker.endpoint`) and
the service's strict decoding of requests and encoding of answers. No web framework is imported.

Requests: ``application/json`` ``{"instances": [INSTANCE, ...]}`` or ``application/jsonlines``,
one per line; an INSTANCE is dense, ``{"features": [x_0, ..., x_{d-1}]}``, or sparse, ``{"data":
{"features": {"keys": [...], "shape": [d], "values": [...]}}}`` (without ``keys``: a dense row).
Answers: ``{"predictions": [{"score": s, "predicted_label": l}, ...]}``, or one object per line
(JSON lines); ``predicted_label`` (1.0 or 0.0) only for a ``binary_classifier``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import BackendError, DataError

__all__ = [
    "JSON", "JSONLINES", "PAYLOAD_FORMATS", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_INSTANCES",
    "RequestError", "as_matrix", "encode_rows", "batch_payloads", "parse_predictions",
    "predictions_to_arrays", "request_media_type", "response_media_type", "decode_request",
    "encode_predictions",
]  # fmt: skip

JSON = "application/json"
JSONLINES = "application/jsonlines"
#: Media types read as JSON lines (the first is the one written).
JSONLINES_TYPES = (JSONLINES, "application/x-jsonlines", "application/jsonl")
PAYLOAD_FORMATS = ("auto", "dense", "sparse")
#: SageMaker's limit on a real-time request body.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 10_000

_FRAMES = {JSON: (b'{"instances": [', b"]}", b", "), JSONLINES: (b"", b"\n", b"\n")}
_NUMBER_TYPES = frozenset((int, float))


# ---- client side: matrices -> request bodies, response bodies -> predictions -------------------
def check_format(format: str) -> str:
    if format not in PAYLOAD_FORMATS:
        raise DataError(f"format must be one of {', '.join(PAYLOAD_FORMATS)}, got {format!r}")
    return format


def as_matrix(X: Any, feature_dim: int | None = None) -> np.ndarray | sp.csr_matrix:
    """``X`` as a float32 CSR matrix or C-contiguous 2-D array (a 1-D array is one row), finite
    (JSON cannot carry NaN or infinity) and, when given, ``feature_dim`` wide; else DataError."""
    from sklearn.utils import check_array

    if not sp.issparse(X) and np.ndim(X) == 1:
        X = np.reshape(X, (1, -1))
    try:
        X = check_array(X, accept_sparse="csr", dtype=np.float32, order="C", ensure_min_samples=0, ensure_min_features=0)
    except (TypeError, ValueError) as exc:
        raise DataError(f"X must be a 2-D numeric matrix (CSR or dense) without NaN or infinity, which JSON cannot carry: {exc}") from None
    if sp.issparse(X):
        X.sum_duplicates()
    if feature_dim is not None and X.shape[1] != feature_dim:
        raise DataError(f"X has {X.shape[1]} columns but the model's feature_dim is {feature_dim}")
    return X


def encode_rows(X: Any, *, format: str = "auto") -> Iterator[bytes]:
    """The JSON object (UTF-8) of each row of ``X`` as SageMaker's FM expects it; ``format``
    ``"auto"`` writes sparse rows for a scipy sparse matrix, dense rows for an array."""
    check_format(format)
    X = as_matrix(X)
    n, d = X.shape
    if sp.issparse(X) if format == "auto" else format == "sparse":
        csr = X if sp.issparse(X) else sp.csr_matrix(X)
        for lo, hi in zip(csr.indptr[:-1], csr.indptr[1:], strict=True):
            row = {"keys": csr.indices[lo:hi].tolist(), "shape": [d], "values": csr.data[lo:hi].tolist()}
            yield json.dumps({"data": {"features": row}}).encode("utf-8")
    else:
        for i in range(n):
            dense = X[i].toarray().ravel() if sp.issparse(X) else X[i]
            yield json.dumps({"features": dense.tolist()}).encode("utf-8")


def batch_payloads(
    X: Any, *, max_bytes: int, format: str = "auto", content_type: str = JSON
) -> Iterator[tuple[int, int, bytes]]:
    """``(start, stop, body)``: rows ``start:stop`` of ``X`` (:func:`encode_rows`) in bodies of
    at most ``max_bytes`` (SageMaker refuses over 6 MB), ``{"instances": [...]}`` (as
    ``json.dumps`` writes it) or one instance per line; a DataError when one row alone is bigger."""
    head, tail, sep = _FRAMES[response_media_type(content_type, strict=True)]
    frame = len(head) + len(tail)
    batch: list[bytes] = []
    size, start = frame, 0
    for i, frag in enumerate(encode_rows(X, format=format)):
        if frame + len(frag) > max_bytes:
            raise DataError(
                f"row {i} alone encodes to {frame + len(frag)} bytes of JSON, more than "
                f"max_payload_bytes={max_bytes}; send sparse rows (format='sparse') or raise "
                "max_payload_bytes (at most 6 MB)"
            )
        if batch and size + len(sep) + len(frag) > max_bytes:
            yield start, i, head + sep.join(batch) + tail
            batch, size, start = [], frame, i
        size += len(frag) + (len(sep) if batch else 0)
        batch.append(frag)
    if batch:
        yield start, start + len(batch), head + sep.join(batch) + tail


def parse_predictions(
    body: bytes | str, n_rows: int | None, *, where: str = "endpoint", content_type: str = JSON
) -> list[dict[str, Any]]:
    """The predictions of an FM answer (``{"predictions": [...]}``, or one per line for a JSON
    lines ``content_type``), checked to be ``n_rows`` (any number when None) objects with a
    numeric ``score``; else a BackendError naming ``where``."""
    jsonlines = base_media_type(content_type) in JSONLINES_TYPES
    payload = None
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        if jsonlines:
            preds: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            payload = json.loads(text)
            preds = payload.get("predictions") if isinstance(payload, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendError(
            f"{where} returned a body that is not {'JSON lines' if jsonlines else 'JSON'} ({exc}); "
            f"it starts with {body[:200]!r}"
        ) from exc
    if not isinstance(preds, list):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise BackendError(f"{where} returned JSON without a 'predictions' list (found {keys})")
    if n_rows is not None and len(preds) != n_rows:
        raise BackendError(f"{where} returned {len(preds)} predictions for {n_rows} rows")
    for j, p in enumerate(preds):
        score = p.get("score") if isinstance(p, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise BackendError(f"{where}: prediction {j} has no numeric 'score': {p!r}")
    return preds


def predictions_to_arrays(predictions: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(scores, predicted_labels)`` as float64 arrays; labels None when no prediction has one."""
    scores = np.array([float(p["score"]) for p in predictions], dtype=np.float64)
    have = ["predicted_label" in p for p in predictions]
    if not any(have):
        return scores, None
    if not all(have):
        raise BackendError("some predictions have a 'predicted_label' and others do not")
    return scores, np.array([float(p["predicted_label"]) for p in predictions], dtype=np.float64)


# ---- server side: request bodies -> a CSR matrix, predictions -> response bodies ----------------
class RequestError(DataError):
    """A request the service refuses: a 4xx ``status_code``, a machine-readable ``error`` code
    (``"invalid_json"``, ...) and a JSON-serializable ``detail`` for people."""

    def __init__(self, status_code: int, error: str, detail: Any):
        super().__init__(f"{error}: {detail}")
        self.status_code, self.error, self.detail = status_code, error, detail


def base_media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def request_media_type(content_type: str | None) -> str:
    """:data:`JSON` or :data:`JSONLINES` for a request's ``Content-Type``; 415 otherwise."""
    base = base_media_type(content_type)
    if base in (JSON, *JSONLINES_TYPES):
        return JSON if base == JSON else JSONLINES
    raise RequestError(
        415, "unsupported_media_type",
        f"Content-Type must be {JSON} or {JSONLINES}, got {content_type or 'none'!r}",
    )  # fmt: skip


def response_media_type(accept: str | None, *, strict: bool = False) -> str:
    """The response type for an ``Accept`` header: its first acceptable entry (q=0 skipped);
    :data:`JSON` when missing, empty or a wildcard. 406 when none is JSON or JSON lines
    (``strict``: a DataError instead, for callers checking their own argument)."""
    if not accept or not accept.strip():
        return JSON
    for entry in accept.split(","):
        base, *params = (part.strip().lower() for part in entry.split(";"))
        if any(_q_is_zero(p) for p in params):
            continue
        if base in (JSON, "*/*", "application/*"):
            return JSON
        if base in JSONLINES_TYPES:
            return JSONLINES
    if strict:
        raise DataError(f"content_type must be {JSON} or {JSONLINES}, got {accept!r}")
    raise RequestError(406, "not_acceptable", f"Accept must allow {JSON} or {JSONLINES}, got {accept!r}")


def _q_is_zero(param: str) -> bool:
    name, _, value = param.partition("=")
    try:
        return name.strip() == "q" and float(value) == 0.0
    except ValueError:
        return False


def _reject_constant(name: str) -> float:
    raise RequestError(400, "invalid_value", f"{name} is not a valid feature value (JSON has no NaN or Infinity)")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RequestError:  # NaN / Infinity, from parse_constant
        raise
    except RecursionError:
        raise RequestError(400, "invalid_json", f"{where} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise RequestError(400, "invalid_json", f"{where} is not valid JSON: {exc}") from None


def _snippet(value: Any, n: int) -> str:
    """The start of ``value`` as JSON, for a message."""
    try:
        return json.dumps(value)[:n]
    except (RecursionError, ValueError):
        return _json_type(value)


def _json_type(value: Any) -> str:
    names = {bool: "boolean", str: "string", type(None): "null", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _numbers(values: Any, where: str) -> np.ndarray:
    """A JSON list of numbers as float64; booleans, strings, null, nested lists and
    non-finite values are refused."""
    if not isinstance(values, list):
        raise RequestError(400, "invalid_instance", f"{where} must be a list of numbers, got {type(values).__name__}")
    if not set(map(type, values)) <= _NUMBER_TYPES:
        j, bad = next((j, v) for j, v in enumerate(values) if type(v) not in _NUMBER_TYPES)
        raise RequestError(
            400, "invalid_value",
            f"{where}[{j}] is {_snippet(bad, 50)} ({_json_type(bad)}); feature values must be numbers",
        )  # fmt: skip
    try:
        arr = np.array(values, dtype=np.float64)
    except OverflowError:
        arr = np.array([math.inf])
    if not np.isfinite(arr).all():
        raise RequestError(400, "invalid_value", f"{where} holds a number too large for float64")
    return arr


def _dense(values: np.ndarray, where: str, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    if len(values) != feature_dim:
        raise RequestError(
            400, "shape_mismatch", f"{where} has {len(values)} values but the model's feature_dim is {feature_dim}"
        )
    keys = np.flatnonzero(values)
    return keys, values[keys]


def _instance(inst: Any, i: int, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, values)`` of instance ``i``."""
    where = f"instances[{i}]"
    if isinstance(inst, dict) and "features" in inst:
        return _dense(_numbers(inst["features"], f"{where}.features"), f"{where}.features", feature_dim)
    data = inst.get("data") if isinstance(inst, dict) else None
    feats = data.get("features") if isinstance(data, dict) else None
    if not isinstance(feats, dict):
        raise RequestError(
            400, "invalid_instance",
            f'{where} must be {{"features": [...]}} or {{"data": {{"features": {{"keys": [...], '
            f'"shape": [{feature_dim}], "values": [...]}}}}}}, got {_snippet(inst, 100)}',
        )  # fmt: skip
    where += ".data.features"
    shape = feats.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int):
        raise RequestError(400, "invalid_instance", f"{where}.shape must be [{feature_dim}], got {_snippet(shape, 50)}")
    if shape[0] != feature_dim:
        raise RequestError(400, "shape_mismatch", f"{where}.shape is {shape} but the model's feature_dim is {feature_dim}")
    if "values" not in feats:
        raise RequestError(400, "invalid_instance", f"{where} has no 'values'")
    values = _numbers(feats["values"], f"{where}.values")
    if "keys" not in feats:
        return _dense(values, f"{where}.values (no keys)", feature_dim)
    keys = feats["keys"]
    if not isinstance(keys, list) or not set(map(type, keys)) <= {int}:
        raise RequestError(400, "invalid_instance", f"{where}.keys must be a list of integers")
    if len(keys) != len(values):
        raise RequestError(400, "length_mismatch", f"{where} has {len(keys)} keys but {len(values)} values")
    if keys and (min(keys) < 0 or max(keys) >= feature_dim):
        bad = next(k for k in keys if not 0 <= k < feature_dim)
        raise RequestError(400, "key_out_of_range", f"{where}.keys holds {bad}; keys must be in [0, {feature_dim})")
    if len(set(keys)) != len(keys):
        raise RequestError(400, "duplicate_keys", f"{where}.keys must not repeat a key")
    return np.array(keys, dtype=np.int64), values


def _too_many(n: int, limit: int) -> None:
    raise RequestError(413, "too_many_instances", f"the request has {n} instances; at most {limit} per request")


def decode_request(
    body: bytes, content_type: str | None, feature_dim: int, *, max_instances: int = DEFAULT_MAX_INSTANCES
) -> sp.csr_matrix:
    """Strictly decode an FM inference request into a float64 CSR matrix (n, feature_dim)
    without explicit zeros; else a RequestError: 415 (content type), 400 (not UTF-8 JSON, wrong
    structure or values, keys out of range, repeated or not matching the values, a width other
    than ``feature_dim``, no instances), 413 (more than ``max_instances``)."""
    media = request_media_type(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, "invalid_json", f"the body is not UTF-8: {exc}") from None
    if media == JSON:
        payload = _loads(text, "the body")
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list):
            found = sorted(payload) if isinstance(payload, dict) else _json_type(payload)
            raise RequestError(400, "invalid_payload", f'expected {{"instances": [...]}}, got {_snippet(found, 100)}')
    else:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) > max_instances:  # before parsing them
            _too_many(len(lines), max_instances)
        instances = [_loads(line, f"line {n}") for n, line in lines]
    if not instances:
        raise RequestError(400, "empty_instances", "the request has no instances; send at least one row")
    if len(instances) > max_instances:
        _too_many(len(instances), max_instances)
    keys, values = zip(*(_instance(inst, i, feature_dim) for i, inst in enumerate(instances)), strict=True)
    rows = np.repeat(np.arange(len(keys)), [len(k) for k in keys])
    X = sp.csr_matrix((np.concatenate(values), (rows, np.concatenate(keys))), shape=(len(keys), feature_dim))
    X.eliminate_zeros()
    return X


def encode_predictions(scores: np.ndarray, labels: np.ndarray | None, media_type: str = JSON) -> bytes:
    """The answer for ``scores`` (and a classifier's ``labels``) in ``media_type``; a
    ``ValueError`` for a non-finite score (JSON has no NaN or Infinity)."""
    preds = [{"score": s} for s in np.asarray(scores, dtype=np.float64).tolist()]
    if labels is not None:
        for p, label in zip(preds, np.asarray(labels, dtype=np.float64).tolist(), strict=True):
            p["predicted_label"] = label
    if media_type == JSONLINES:
        return "".join(json.dumps(p, allow_nan=False) + "\n" for p in preds).encode("utf-8")
    return json.dumps({"predictions": preds}, allow_nan=False).encode("utf-8")
