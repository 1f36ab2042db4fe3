"""Property-based fuzzing of the SageMaker artifact readers (issue #12): whatever the bytes, the
MXNet NDArray reader, :func:`read_fm_artifact` and :func:`parse_knn_jsonlines` either read them
or raise one of recsys's own errors -- never ``struct.error``, ``IndexError``, ``MemoryError``,
``RecursionError`` ... -- and a header claiming huge sizes is refused before anything that size
is allocated. Bounded and deterministic (``derandomize``), so it runs in CI."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from backends.sagemaker.artifacts import fm_model_tar_bytes, parse_knn_jsonlines, read_fm_artifact  # noqa: E402
from backends.sagemaker.mxnet_ndarray import LIST_MAGIC, NDARRAY_V2_MAGIC, read_ndarray_list  # noqa: E402
from recsys.errors import RecsysError  # noqa: E402
from recsys.model import FittedFM  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"


def _members(model_tar: bytes) -> list[tuple[str, bytes]]:
    import zipfile

    with tarfile.open(fileobj=io.BytesIO(model_tar)) as tf:
        algo = tf.extractfile("model_algo-1").read()
    with zipfile.ZipFile(io.BytesIO(algo)) as zf:
        return [(n, zf.read(n)) for n in zf.namelist()]



SEEDS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.params"))]
MODEL = fm_model_tar_bytes(FittedFM(w0=0.5, w=np.arange(5.0), V=np.ones((5, 2))))
PARAMS = next(data for name, data in _members(MODEL) if name == "params")
KNN_LINES = b'{"distances": [0.5, 0.25], "labels": [3.0, 1.0], "predicted_label": 3.0}\n{"distances": [], "labels": []}\n'
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A valid file with a few bytes flipped, a run overwritten by a (possibly huge) integer,
    a cut, or a splice -- the corruptions that reach deep into a parser."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "int", "cut", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "int":
            value = draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]))
            data[at : at + 8] = value.to_bytes(8, "little")
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


def reads_or_refuses(read, data) -> None:
    try:
        read(data)
    except RecsysError:
        pass


@FUZZ
@given(st.one_of(mutated(SEEDS), st.binary(max_size=512)))
def test_mxnet_ndarray_reader(data):
    reads_or_refuses(read_ndarray_list, data)


def _read_artifact(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tar.gz"
        path.write_bytes(data)
        read_fm_artifact(path, predictor_type="regressor", max_bytes=1 << 20)


@FUZZ
@given(st.one_of(mutated([MODEL]), mutated(SEEDS), st.binary(max_size=512)))
def test_fm_artifact_reader(data):
    reads_or_refuses(_read_artifact, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["labels", "distances", "x"]), inner, max_size=3),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(
    mutated([KNN_LINES]),
    st.binary(max_size=256),
    st.lists(json_values, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows)),
    st.integers(1, 50_000).map(lambda depth: "[" * depth),
))  # fmt: skip
def test_knn_output_parser(data):
    reads_or_refuses(lambda d: parse_knn_jsonlines(d, k=4), data)


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
       st.binary(max_size=200) | json_values.map(lambda v: json.dumps({"training_parameters": v}).encode()))
def test_meta_and_symbol_json_are_advisory(symbol, meta):
    """Whatever meta.json and symbol.json hold, the weights are read (the JSON is only advice)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "params").write_bytes(PARAMS)
        (folder / "symbol.json").write_bytes(symbol)
        (folder / "meta.json").write_bytes(meta)
        fm = read_fm_artifact(folder, predictor_type="binary_classifier")
    assert fm.predictor_type == "binary_classifier" and fm.V.shape == (5, 2) and fm.w0 == 0.5


# ---- huge claims are refused before allocation ------------------------------------------------
def peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(RecsysError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def dense_header(shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """One float32 array claiming ``shape``, followed by only ``data``."""
    return (struct.pack("<QQQ", LIST_MAGIC, 0, 1) + struct.pack("<Ii", NDARRAY_V2_MAGIC, 0)
            + struct.pack(f"<i{len(shape)}q", len(shape), *shape) + struct.pack("<iii", 1, 0, 0) + data)  # fmt: skip


def csr_header(shape: tuple[int, int]) -> bytes:
    """A CSR array whose dense shape is huge but which stores a single value."""
    head = struct.pack("<QQQ", LIST_MAGIC, 0, 1) + struct.pack("<Ii", NDARRAY_V2_MAGIC, 2)
    head += struct.pack("<iq", 1, 1) + struct.pack("<i2q", 2, *shape) + struct.pack("<iii", 1, 0, 0)
    head += struct.pack("<iiq", 6, 1, shape[0] + 1) + struct.pack("<iiq", 6, 1, 1)  # aux: indptr, indices
    body = np.float32(1).tobytes() + np.zeros(shape[0] + 1, "<i8").tobytes() + np.zeros(1, "<i8").tobytes()
    return head + body + struct.pack("<Q", 0)  # no names


@pytest.mark.parametrize("shape", [(2**40,), (2**20, 2**20, 64), (2**47,)])
def test_a_header_claiming_a_huge_array_is_refused_before_allocation(shape):
    assert peak_bytes(lambda: read_ndarray_list(dense_header(shape, b"\0" * 64))) < 1 << 20


def test_a_sparse_array_claiming_a_huge_dense_shape_is_refused_before_allocation():
    assert peak_bytes(lambda: read_ndarray_list(csr_header((1, 2**40)))) < 1 << 20


def test_a_tar_member_claiming_a_huge_size_is_refused_before_reading(tmp_path):
    info = tarfile.TarInfo("model_algo-1")
    info.size = 2**33  # 8 GiB claimed in the header, a few bytes present
    buf = io.BytesIO()
    buf.write(info.tobuf(format=tarfile.GNU_FORMAT) + b"PK\x03\x04" + b"\0" * 508)
    path = tmp_path / "model.tar.gz"
    path.write_bytes(buf.getvalue())
    assert peak_bytes(lambda: read_fm_artifact(path, max_bytes=1 << 20)) < 1 << 20
