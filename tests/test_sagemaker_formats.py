"""Offline SageMaker formats: MXNet NDArray files, the FM model artifact, k-NN JSON lines and
RecordIO-protobuf.

The ``tests/fixtures/mxnet`` files were written by real MXNet 1.9.1
(``tests/fixtures/make_mxnet_fixtures.py``); the RecordIO tests round-trip through the
SageMaker SDK's own writers and protobuf parser.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from backends.sagemaker.artifacts import (
    fm_model_tar_bytes,
    fm_symbol_json,
    parse_knn_jsonlines,
    read_fm_artifact,
    write_fm_model_tar,
)
from backends.sagemaker.mxnet_ndarray import (
    NDARRAY_V1_MAGIC,
    read_ndarray_dict,
    read_ndarray_list,
    write_ndarray_list,
)
from recsys.errors import ModelFormatError
from recsys.model import FittedFM
from tests.reference import fm_brute_force

pytest.register_assert_rewrite("tests.sagemaker_fakes")
from tests.sagemaker_fakes import write_knn_jsonlines  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"
FM_TARS = {
    "regressor": FIXTURES / "fm_model_regressor.tar.gz",
    "binary_classifier": FIXTURES / "fm_model_classifier.tar.gz",
}
PRED_KEYS = {"regressor": "fm_pred_regressor", "binary_classifier": "fm_pred_classifier"}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def algo_members(tar_path: Path) -> dict[str, bytes]:
    """The files inside model.tar.gz -> model_algo-1 (a zip)."""
    with tarfile.open(tar_path) as tf:
        algo = tf.extractfile("model_algo-1").read()
    with zipfile.ZipFile(io.BytesIO(algo)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ---- MXNet NDArray files -----------------------------------------------------------------------
def test_fm_params_match_the_arrays_mxnet_saved(expected):
    arrays = read_ndarray_dict(FIXTURES / "fm_params_f32.params")
    assert list(arrays) == ["arg:w0_weight", "arg:w1_weight", "arg:v"]
    for key, name in (
        ("arg:w0_weight", "fm_w0_weight"),
        ("arg:w1_weight", "fm_w1_weight"),
        ("arg:v", "fm_v"),
    ):
        assert arrays[key].dtype == np.float32
        np.testing.assert_array_equal(arrays[key], expected[name])
    assert arrays["arg:w1_weight"].shape == (7, 1) and arrays["arg:v"].shape == (7, 3)


@pytest.mark.parametrize("name", ["f64", "f16", "u8", "i8", "i32", "i64", "bool", "f32_3d"])
def test_every_dense_dtype_reads_exactly(expected, name):
    arrays = read_ndarray_dict(FIXTURES / "mixed_dtypes.params")
    want = expected[f"mixed_{name}"]
    assert arrays[name].dtype == want.dtype
    assert arrays[name].shape == want.shape
    np.testing.assert_array_equal(arrays[name], want)
    assert arrays[name].flags.writeable


def test_list_without_names(expected):
    arrays, names = read_ndarray_list(FIXTURES / "unnamed_list.params")
    assert names == []
    np.testing.assert_array_equal(arrays[0], expected["list_0"])
    np.testing.assert_array_equal(arrays[1], expected["list_1"])
    assert arrays[1].dtype == np.int32
    with pytest.raises(ModelFormatError, match="saved from a list"):
        read_ndarray_dict(FIXTURES / "unnamed_list.params")


def test_numpy_shape_semantics_v3_scalar_and_zero_size(expected):
    arrays = read_ndarray_dict(FIXTURES / "np_shape_v3.params")
    assert arrays["scalar"].shape == () and arrays["scalar"] == expected["v3_scalar"]
    assert arrays["empty"].shape == (0, 3) and arrays["empty"].dtype == np.float32


@pytest.mark.parametrize(("name", "stype"), [("row_sparse", 1), ("csr", 2)])
def test_sparse_arrays_are_refused_naming_their_storage(name, stype):
    with pytest.raises(
        ModelFormatError,
        match=rf"array #0 has sparse storage \({name}, type {stype}\); only dense MXNet v2/v3",
    ):
        read_ndarray_dict(FIXTURES / f"{name}.params")


@pytest.mark.parametrize("name", ["fm_params_f32", "mixed_dtypes", "unnamed_list"])
def test_writer_is_byte_identical_to_mx_nd_save(name):
    raw = (FIXTURES / f"{name}.params").read_bytes()
    arrays, names = read_ndarray_list(raw)
    written = write_ndarray_list(dict(zip(names, arrays, strict=True)) if names else arrays)
    assert written == raw


def test_writer_normalises_byte_order_and_layout():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    reference = write_ndarray_list({"a": a})
    assert write_ndarray_list({"a": a.astype(">f4")}) == reference
    assert write_ndarray_list({"a": np.asfortranarray(a)}) == reference
    assert write_ndarray_list({"a": a.T.copy().T}) == reference


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.float32(1.0), "0-d"),
        (np.array([1 + 2j]), "complex128"),
        (np.array(["x"]), "cannot store"),
    ],
)
def test_writer_rejects_what_mxnet_cannot_store(value, match):
    with pytest.raises(ModelFormatError, match=match):
        write_ndarray_list({"x": value})


@pytest.mark.parametrize(
    "name", ["fm_params_f32", "mixed_dtypes", "row_sparse", "csr", "np_shape_v3", "unnamed_list"]
)
def test_every_truncation_is_a_model_format_error(name):
    raw = (FIXTURES / f"{name}.params").read_bytes()
    for cut in range(len(raw)):
        with pytest.raises(ModelFormatError):
            read_ndarray_list(raw[:cut])


def test_bad_magics_are_named():
    raw = bytearray((FIXTURES / "fm_params_f32.params").read_bytes())
    bad_header = bytes(raw)
    bad_header = struct.pack("<Q", 0x113) + bad_header[8:]
    with pytest.raises(
        ModelFormatError, match="not an MXNet NDArray file: header 0x0000000000000113"
    ):
        read_ndarray_list(bad_header)
    raw[24:28] = struct.pack("<I", 0xDEADBEEF)
    with pytest.raises(ModelFormatError, match="unknown magic 0xDEADBEEF"):
        read_ndarray_list(bytes(raw))


def _one_array(dtype_flag: int = 0, stype: int = 0, data: bytes = b"\0" * 4) -> bytes:
    body = (
        struct.pack("<Ii", 0xF993FAC9, stype)
        + struct.pack("<iq", 1, 1)
        + struct.pack("<iii", 1, 0, dtype_flag)
    )
    return struct.pack("<QQQ", 0x112, 0, 1) + body + data + struct.pack("<Q", 0)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_one_array(dtype_flag=99), "unknown dtype flag 99"),
        (_one_array(dtype_flag=12, data=b"\0\0"), "bfloat16"),
        (_one_array(stype=7), "unknown storage type 7"),
        (_one_array()[:-8] + struct.pack("<Q", 2), "1 arrays but 2 names"),
        (struct.pack("<QQQ", 0x112, 0, 10**12) + b"\0" * 16, "array count"),
        (b"\x12\x01", "too short"),
    ],
)
def test_corrupt_headers_are_explained(raw, match):
    with pytest.raises(ModelFormatError, match=match):
        read_ndarray_list(raw)


def test_v1_and_legacy_layouts_are_refused_naming_the_layout():
    """Hand-built from NDArray::LegacyLoad: v1 has int64 dims, pre-v1 has the ndim as the
    magic and uint32 dims; neither has a storage type. (MXNet 1.x does not write these.)"""
    data = np.arange(6, dtype=np.float64)
    ctx_dtype = struct.pack("<iii", 1, 0, 1)
    v1 = (
        struct.pack("<I", NDARRAY_V1_MAGIC)
        + struct.pack("<i2q", 2, 2, 3)
        + ctx_dtype
        + data.tobytes()
    )
    legacy = struct.pack("<I2I", 2, 3, 2) + ctx_dtype + data.tobytes()
    legacy_none = struct.pack("<I", 0)  # ndim 0: an empty NDArray, nothing follows
    for array, layout in (
        (v1, "v1"),
        (legacy, r"pre-v1 legacy \(magic 2 is the ndim\)"),
        (legacy_none, r"pre-v1 legacy \(magic 0 is the ndim\)"),
    ):
        raw = struct.pack("<QQQ", 0x112, 0, 1) + array + struct.pack("<Q", 0)
        with pytest.raises(
            ModelFormatError,
            match=rf"array #0 at offset 24 is in MXNet's {layout} NDArray layout; only dense",
        ):
            read_ndarray_list(raw)


def test_random_corruption_never_leaks_other_exceptions():
    rng = np.random.default_rng(0)
    raw = (FIXTURES / "mixed_dtypes.params").read_bytes()
    for _ in range(300):
        buf = bytearray(raw)
        for pos in rng.integers(0, len(buf), size=rng.integers(1, 4)):
            buf[pos] = int(rng.integers(0, 256))
        try:
            read_ndarray_list(bytes(buf))
        except ModelFormatError:
            pass


# ---- the FM model artifact ----------------------------------------------------------------------
@pytest.mark.parametrize("ptype", ["regressor", "binary_classifier"])
def test_read_fm_artifact_matches_mxnet_forward_pass(expected, ptype):
    fm = read_fm_artifact(FM_TARS[ptype])
    assert fm.predictor_type == ptype
    assert fm.w0 == pytest.approx(float(expected["fm_w0_weight"][0]), abs=0)
    np.testing.assert_array_equal(fm.w, expected["fm_w1_weight"].ravel())
    np.testing.assert_array_equal(fm.V, expected["fm_v"])
    X = expected["fm_X"]
    np.testing.assert_allclose(
        fm.predict_score(X), expected[PRED_KEYS[ptype]], rtol=1e-5, atol=1e-6
    )
    assert fm.config["feature_dim"] == 7 and fm.config["num_factors"] == 3
    assert fm.config["predictor_type"] == ptype
    assert fm.metadata == {"backend": "sagemaker", "source": str(FM_TARS[ptype])}


def test_fm_predictions_equal_brute_force_formula():
    fm = read_fm_artifact(FM_TARS["regressor"])
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, fm.feature_dim)) * (rng.random((20, fm.feature_dim)) < 0.5)
    expected = fm_brute_force(fm.w0, fm.w, fm.V, X)
    np.testing.assert_allclose(fm.decision_function(X), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fm.decision_function(sp.csr_matrix(X)), expected, rtol=1e-10)


def _extract(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    members = algo_members(FM_TARS["binary_classifier"])
    with tarfile.open(FM_TARS["binary_classifier"]) as tf:
        algo = tf.extractfile("model_algo-1").read()
    (tmp_path / "model_algo-1").write_bytes(algo)
    return tmp_path / "model_algo-1", members


def test_read_fm_artifact_accepts_every_layout(tmp_path, expected, caplog):
    algo_path, members = _extract(tmp_path)
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    for name, data in members.items():
        (extracted / name).write_bytes(data)
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    (bare_dir / "params").write_bytes(members["params"])
    tar_dir = tmp_path / "tardir"
    tar_dir.mkdir()
    (tar_dir / "model.tar.gz").write_bytes(FM_TARS["binary_classifier"].read_bytes())

    for path in (algo_path, extracted, tmp_path, tar_dir):
        fm = read_fm_artifact(path)
        assert fm.predictor_type == "binary_classifier", path
        np.testing.assert_array_equal(fm.V, expected["fm_v"])
        assert fm.metadata["source"] == str(path)

    with caplog.at_level(logging.WARNING, logger="recsys"):
        bare = read_fm_artifact(bare_dir / "params")
    assert bare.predictor_type == "regressor" and "assuming 'regressor'" in caplog.text
    assert bare.config == {}
    assert read_fm_artifact(bare_dir / "params", predictor_type="binary_classifier").is_classifier


def test_predictor_type_from_symbol_json_and_disagreements_are_warnings(tmp_path, caplog):
    """meta.json and symbol.json are advisory: the caller's predictor type wins, with a warning."""
    members = algo_members(FM_TARS["binary_classifier"])
    no_meta = tmp_path / "no_meta_algo"
    no_meta.write_bytes(make_zip({"symbol.json": members["symbol.json"], "params": members["params"]}))
    assert read_fm_artifact(no_meta).predictor_type == "binary_classifier"
    with caplog.at_level(logging.WARNING, logger="recsys"):
        assert read_fm_artifact(no_meta, predictor_type="regressor").predictor_type == "regressor"
    assert "symbol.json says predictor_type 'binary_classifier' but 'regressor' is used (as requested)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recsys"):
        fm = read_fm_artifact(FM_TARS["binary_classifier"], predictor_type="regressor")
    assert fm.predictor_type == "regressor" and "meta.json says predictor_type 'binary_classifier'" in caplog.text
    with pytest.raises(ModelFormatError, match="must be 'regressor' or 'binary_classifier'"):
        read_fm_artifact(no_meta, predictor_type="multiclass")


def test_unexpected_meta_and_symbol_json_are_warnings_not_errors(tmp_path, caplog, expected):
    members = algo_members(FM_TARS["regressor"])
    meta = json.loads(members["meta.json"])
    meta["training_parameters"].update(feature_dim="8", predictor_type="multiclass_classifier")
    cases = {"disagrees": json.dumps(meta).encode(), "not json": b"{", "deep": b"[" * 100_000}
    for name, raw in cases.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(make_zip({**members, "meta.json": raw, "symbol.json": b"\xff not json"}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="recsys"):
            fm = read_fm_artifact(path, predictor_type="regressor")
        assert fm.feature_dim == 7 and fm.predictor_type == "regressor", name
        assert "symbol.json is not valid JSON" in caplog.text, name
    assert "meta.json says feature_dim='8' but the weights have 7; using the weights" not in caplog.text
    path = tmp_path / "disagrees"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recsys"):
        assert read_fm_artifact(path, predictor_type="regressor").config["feature_dim"] == 7
    assert "meta.json says feature_dim=8 but the weights have 7; using the weights" in caplog.text
    assert "'multiclass_classifier', which recsys does not know" in caplog.text


def test_one_hot_layout_goes_into_metadata():
    fm = read_fm_artifact(FM_TARS["regressor"], n_users=3, n_items=4)
    assert fm.metadata["n_users"] == 3 and fm.one_hot_layout() == (3, 4)
    with pytest.raises(ModelFormatError, match="exceeds the model's feature_dim 7"):
        read_fm_artifact(FM_TARS["regressor"], n_users=5, n_items=5)
    with pytest.raises(ModelFormatError, match="non-negative int"):
        read_fm_artifact(FM_TARS["regressor"], n_users=-1)


def _params_file(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "params"
    path.write_bytes(write_ndarray_list(arrays))
    return path


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"arg:v": np.zeros((3, 2), np.float32)},
            r"expected arg:w0_weight.*the file has \['arg:v'\]",
        ),
        (
            {"arg:w0_weight": np.zeros(1, np.float32), "arg:v": np.zeros((3, 2), np.float32)},
            r"lack \['arg:w1_weight'\]; the file has",
        ),
        (
            {
                "arg:w0_weight": np.zeros(1, np.float32),
                "arg:w1_weight": np.zeros((3, 1), np.float32),
                "arg:v": np.zeros((4, 2), np.float32),
            },
            r"v must have shape \(feature_dim, num_factors\) = \(3, k\), got \(4, 2\)",
        ),
        (
            {
                "arg:w0_weight": np.zeros(2, np.float32),
                "arg:w1_weight": np.zeros((3, 1), np.float32),
                "arg:v": np.zeros((3, 2), np.float32),
            },
            "must hold one value",
        ),
        (
            {
                "arg:w0_weight": np.zeros(1, np.float32),
                "arg:w1_weight": np.full((3, 1), np.nan, np.float32),
                "arg:v": np.zeros((3, 2), np.float32),
            },
            "NaN or infinite.*diverged",
        ),
    ],
)
def test_bad_fm_params_are_explained(tmp_path, arrays, match):
    with pytest.raises(ModelFormatError, match=match):
        read_fm_artifact(_params_file(tmp_path, arrays), predictor_type="regressor")


def test_linear_plus_bias_naming_is_transposed(tmp_path):
    rng = np.random.default_rng(5)
    w, V = rng.normal(size=4).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    path = _params_file(
        tmp_path,
        {
            "arg:Linear_Plus_Bias_weight": w.reshape(1, 4),
            "arg:Linear_Plus_Bias_bias": np.array([0.5], np.float32),
            "arg:v": V.T.copy(),
        },
    )
    fm = read_fm_artifact(path, predictor_type="regressor")
    assert fm.w0 == 0.5
    np.testing.assert_array_equal(fm.w, w)
    np.testing.assert_array_equal(fm.V, V)


def test_unreadable_artifacts_raise_model_format_error(tmp_path):
    good = FM_TARS["regressor"].read_bytes()
    cases = {
        "truncated.tar.gz": good[: len(good) // 2],
        "garbage.bin": b"not a model at all" * 10,
        "empty.tar.gz": b"",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("something_else.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    cases["no_algo.tar.gz"] = buf.getvalue()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFormatError):
            read_fm_artifact(tmp_path / name)
    with pytest.raises(ModelFormatError, match="something_else.txt"):
        read_fm_artifact(tmp_path / "no_algo.tar.gz")
    with pytest.raises(ModelFormatError, match="does not exist"):
        read_fm_artifact(tmp_path / "missing.tar.gz")
    with pytest.raises(ModelFormatError, match="limit"):
        read_fm_artifact(FM_TARS["regressor"], max_bytes=100)


@pytest.mark.parametrize("ptype", ["regressor", "binary_classifier"])
def test_write_fm_model_tar_reproduces_the_real_mxnet_files(expected, ptype):
    """Same arrays -> params byte-identical to mx.nd.save; symbol.json equal (as JSON) to MXNet's
    Symbol.tojson(); meta.json equal to the fixture's."""
    fm = read_fm_artifact(FM_TARS[ptype])
    ours = algo_members_from_bytes(fm_model_tar_bytes(fm))
    real = algo_members(FM_TARS[ptype])
    assert list(ours) == ["symbol.json", "params", "meta.json"]
    assert ours["params"] == real["params"]
    assert json.loads(ours["symbol.json"]) == json.loads(real["symbol.json"])
    assert json.loads(ours["meta.json"]) == json.loads(real["meta.json"])
    assert json.loads(fm_symbol_json(7, 3, ptype)) == json.loads(real["symbol.json"])


def algo_members_from_bytes(tar_gz: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_gz)) as tf:
        assert tf.getnames() == ["model_algo-1"]
        info = tf.getmember("model_algo-1")
        assert info.mtime == 0
        algo = tf.extractfile(info).read()
    with zipfile.ZipFile(io.BytesIO(algo)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


@pytest.mark.parametrize("ptype", ["regressor", "binary_classifier"])
def test_write_fm_model_tar_round_trip(tmp_path, ptype):
    rng = np.random.default_rng(11)
    fm = FittedFM(
        w0=float(np.float32(0.3)),
        w=rng.normal(size=50),
        V=rng.normal(size=(50, 8)),
        predictor_type=ptype,
        config={"epochs": 3, "factors_lr": 0.01, "bias_init_method": "normal"},
        metadata={"n_users": 20, "n_items": 30},
    )
    path = write_fm_model_tar(fm, tmp_path / "out" / "model.tar.gz")
    assert path == tmp_path / "out" / "model.tar.gz"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.tar.gz"]  # no temp files left
    back = read_fm_artifact(path, n_users=20, n_items=30)
    assert back.w0 == fm.w0 and back.predictor_type == ptype
    np.testing.assert_array_equal(back.w, fm.w)
    np.testing.assert_array_equal(back.V, fm.V)
    assert back.config == {
        "epochs": 3,
        "factors_lr": 0.01,
        "bias_init_method": "normal",
        "feature_dim": 50,
        "num_factors": 8,
        "predictor_type": ptype,
    }
    assert back.one_hot_layout() == (20, 30)
    assert write_fm_model_tar(fm, tmp_path / "again.tar.gz").read_bytes() == path.read_bytes()


# ---- k-NN JSON lines ----------------------------------------------------------------------------
def test_parse_knn_jsonlines_pads_short_rows():
    text = (
        '{"predicted_label": 3.0, "labels": [3.0, 7.0, 3.0], "distances": [0.5, 0.25, 0.125]}\n'
        '{"predicted_label": 1.0, "labels": [1.0], "distances": [2.0]}\n'
        "\n"
    )
    labels, distances = parse_knn_jsonlines(text.encode())
    assert labels.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(labels, [[3, 7, 3], [1, -1, -1]])
    np.testing.assert_array_equal(distances[0], [0.5, 0.25, 0.125])
    assert distances[1, 0] == 2.0 and np.isnan(distances[1, 1:]).all()
    labels4, distances4 = parse_knn_jsonlines(text, k=4)
    assert labels4.shape == (2, 4) and labels4[0, 3] == -1 and np.isnan(distances4[0, 3])


def test_parse_knn_verbose_json_from_the_docs():
    doc = (
        '{"predictions": [{"predicted_label": 0.0, "distances": [3.11792408, 3.89746071, 6.32548437], '
        '"labels": [0.0, 1.0, 0.0]}, {"predicted_label": 2.0, "distances": [1.08470316, 3.04917915, '
        '5.25393973], "labels": [2.0, 2.0, 0.0]}]}'
    )
    labels, distances = parse_knn_jsonlines(doc)
    np.testing.assert_array_equal(labels, [[0, 1, 0], [2, 2, 0]])
    np.testing.assert_allclose(distances[1], [1.08470316, 3.04917915, 5.25393973], rtol=1e-6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"predicted_label": 2.0}\n', "verbose=true"),
        ('{"labels": [1.0, 2.0], "distances": [0.1]}\n', "equal length"),
        ('{"labels": [1.5], "distances": [0.1]}\n', "labels that are not integers"),
        ('{"labels": [1e300], "distances": [0.1]}\n', "labels that are not integers"),
        ('{"labels": ["1"], "distances": [0.1]}\n', "non-numeric labels"),
        ('{"labels": [true], "distances": [0.1]}\n', "non-numeric labels"),
        ('{"labels": [1], "distances": [1' + "0" * 400 + ']}\n', "too large"),
        ("{not json\n", "line 1 is not valid JSON"),
        ("[" * 100_000 + "\n", "line 1 is not valid JSON"),
        ('{"foo": 1}\n', "lacks 'labels' and 'distances'"),
    ],
)
def test_parse_knn_errors(text, match):
    with pytest.raises(ModelFormatError, match=match):
        parse_knn_jsonlines(text)


def test_parse_knn_row_longer_than_k():
    with pytest.raises(ModelFormatError, match="more than k=1"):
        parse_knn_jsonlines('{"labels": [1.0, 2.0], "distances": [0.1, 0.2]}', k=1)


def test_knn_jsonlines_round_trip():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 100, size=(5, 4))
    labels[4, 2:] = -1
    distances = rng.random((5, 4)).astype(np.float32)
    distances[4, 2:] = np.nan
    raw = write_knn_jsonlines(labels, distances)
    first = json.loads(raw.splitlines()[0])
    assert set(first) == {"labels", "distances", "predicted_label"}
    assert all(isinstance(x, float) for x in first["labels"])
    back_labels, back_distances = parse_knn_jsonlines(raw)
    np.testing.assert_array_equal(back_labels, labels)
    np.testing.assert_array_equal(back_distances, distances)
    tie = json.loads(write_knn_jsonlines(np.array([[5, 6, 6, 5]]), np.zeros((1, 4))))
    assert tie["predicted_label"] == 5.0  # a tie goes to the nearest label


def test_corrupt_archives_never_leak_other_exceptions(tmp_path):
    raw = FM_TARS["regressor"].read_bytes()
    with tarfile.open(FM_TARS["regressor"]) as tf:
        algo = tf.extractfile("model_algo-1").read()
    rng = np.random.default_rng(1)
    for i in range(60):
        source = raw if i % 2 else algo
        buf = bytearray(source)
        for pos in rng.integers(0, len(buf), size=rng.integers(1, 4)):
            buf[pos] = int(rng.integers(0, 256))
        (tmp_path / "m").write_bytes(bytes(buf))
        try:
            read_fm_artifact(tmp_path / "m", predictor_type=None)
        except ModelFormatError:
            pass
