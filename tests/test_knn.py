"""Tests of the local FAISS k-NN index (backends/local/knn.py).

Every search result is checked against a brute-force numpy reference (``argsort`` of the full
score matrix), never against FAISS itself.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import scipy.sparse as sp

from backends import get_backend
from backends.base import KNNIndex
from backends.local.knn import KNN_FORMAT_VERSION, FaissIndex
from recsys.errors import BackendError, DataError, ModelFormatError
from recsys.params import KNNParams
from tests.reference import BruteIndex, assert_top_k, knn_brute_force, knn_scores


def brute_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    return knn_scores(x, q, metric)


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """FAISS's OpenMP k-means takes ~0.4 s per tiny IVF build on a 2-core box; 1 thread, ~1 ms."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    q = rng.normal(size=(57, 8)).astype(np.float32)
    return x, q


# ---------------------------------------------------------------------------------------------
# exact search equals argsort


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "L2", "COSINE"])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_flat_equals_bruteforce(data, metric, k):
    x, q = data
    index = FaissIndex.build(x, KNNParams(index_metric=metric))
    assert isinstance(index, KNNIndex)
    assert (index.ntotal, index.dim, index.metric) == (300, 8, metric)
    ids, scores = index.search(q, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert_top_k(brute_scores(x, q, metric), ids, scores, k, metric)


def test_l2_scores_are_ascending_squared_distances(data):
    x, q = data
    ids, scores = FaissIndex.build(x, KNNParams(index_metric="L2")).search(q, 20)
    assert np.all(np.diff(scores, axis=1) >= 0)
    # squared (not plain) Euclidean distance, computed here by hand for one pair
    d2 = float(np.sum((q[0].astype(np.float64) - x[ids[0, 0]]) ** 2))
    assert scores[0, 0] == pytest.approx(d2, rel=1e-5)


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "COSINE"])
def test_similarity_scores_descending(data, metric):
    x, q = data
    _, scores = FaissIndex.build(x, KNNParams(index_metric=metric)).search(q, 50)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_cosine_is_scale_invariant(data):
    """COSINE normalises both sides: scaling the data or the queries changes nothing."""
    x, q = data
    scale = np.linspace(0.1, 50, len(x), dtype=np.float32)[:, None]
    a = FaissIndex.build(x, KNNParams(index_metric="COSINE")).search(q, 15)
    b = FaissIndex.build(x * scale, KNNParams(index_metric="COSINE")).search(q * 7.0, 15)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    assert np.all(np.abs(a[1]) <= 1 + 1e-5)


def test_cosine_does_not_mutate_inputs(data):
    x, q = data
    x0, q0 = x.copy(), q.copy()
    FaissIndex.build(x, KNNParams(index_metric="COSINE")).search(q, 3)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(q, q0)


def test_hand_computed_tiny_case():
    x = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    q = np.array([[2, 1]], dtype=np.float32)
    ip_i, ip_s = FaissIndex.build(x, KNNParams(index_metric="INNER_PRODUCT")).search(q, 4)
    # <q, x> = 2, 1, 3, -2
    np.testing.assert_array_equal(ip_i, [[2, 0, 1, 3]])
    np.testing.assert_allclose(ip_s, [[3, 2, 1, -2]])
    l2_i, l2_s = FaissIndex.build(x, KNNParams(index_metric="L2")).search(q, 4)
    # |q - x|^2 = 1+1, 4+0, 1+0, 9+1
    np.testing.assert_array_equal(l2_i, [[2, 0, 1, 3]])
    np.testing.assert_allclose(l2_s, [[1, 2, 4, 10]])
    cos_i, cos_s = FaissIndex.build(x, KNNParams(index_metric="COSINE")).search(q, 4)
    # cos = 2/sqrt5, 1/sqrt5, 3/sqrt10, -2/sqrt5
    np.testing.assert_array_equal(cos_i, [[2, 0, 1, 3]])
    r5, r10 = np.sqrt(5), np.sqrt(10)
    np.testing.assert_allclose(cos_s, [[3 / r10, 2 / r5, 1 / r5, -2 / r5]], rtol=1e-6)


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "L2", "COSINE"])
def test_k_larger_than_ntotal(data, metric):
    x, q = data
    small = x[:7]
    ids, scores = FaissIndex.build(small, KNNParams(index_metric=metric)).search(q, 50)
    assert scores.shape == ids.shape == (len(q), 7)
    assert (ids >= 0).all()
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(7), (len(q), 1)))
    assert_top_k(brute_scores(small, q, metric), ids, scores, 50, metric)


def test_single_1d_query(data):
    x, q = data
    index = FaissIndex.build(x, KNNParams())
    i1, s1 = index.search(q[3], 5)
    i2, s2 = index.search(q[3:4], 5)
    assert s1.shape == (1, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "L2", "COSINE"])
@pytest.mark.parametrize("batch", [1, 5, 56, 57])
def test_query_batching_identical(data, metric, batch):
    x, q = data
    one = FaissIndex.build(x, KNNParams(index_metric=metric, query_batch_size=10_000)).search(q, 12)
    many = FaissIndex.build(x, KNNParams(index_metric=metric, query_batch_size=batch)).search(q, 12)
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_array_equal(one[0], many[0])


def test_backend_build_knn_is_faiss(data):
    x, q = data
    index = get_backend("torch").build_knn(x, KNNParams(index_metric="L2"))
    assert isinstance(index, FaissIndex)
    assert_top_k(brute_scores(x, q, "L2"), *index.search(q, 9), 9, "L2")


# ---------------------------------------------------------------------------------------------
# IVF


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "L2", "COSINE"])
def test_ivf_with_all_lists_probed_is_exact(data, metric):
    x, q = data
    params = KNNParams(
        index_type="faiss.IVFFlat", index_metric=metric, faiss_index_ivf_nlists=8, nprobe=8
    )
    index = FaissIndex.build(x, params)
    assert index.index.nlist == 8 and index.index.nprobe == 8
    ids, scores = index.search(q, 10)
    assert_top_k(brute_scores(x, q, metric), ids, scores, 10, metric)


def test_ivf_auto_nlist_and_nprobe_clamped(data):
    x, q = data
    # "auto" = int(sqrt(300)) = 17 cells; nprobe larger than nlist is clamped to nlist
    index = FaissIndex.build(x, KNNParams(index_type="faiss.IVFFlat", nprobe=1000))
    assert index.index.nlist == 17
    assert index.index.nprobe == 17
    assert_top_k(brute_scores(x, q, "INNER_PRODUCT"), *index.search(q, 10), 10, "INNER_PRODUCT")


def test_ivf_nlist_larger_than_n_is_clamped():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    index = FaissIndex.build(
        x, KNNParams(index_type="faiss.IVFFlat", faiss_index_ivf_nlists=50, nprobe=50)
    )
    assert index.index.nlist == 5
    q = rng.normal(size=(4, 3)).astype(np.float32)
    assert_top_k(brute_scores(x, q, "INNER_PRODUCT"), *index.search(q, 5), 5, "INNER_PRODUCT")


def test_ivf_with_training_sample_all_probed_is_exact(data):
    x, q = data
    params = KNNParams(
        index_type="faiss.IVFFlat",
        faiss_index_ivf_nlists=4,
        nprobe=4,
        sample_size=100,
        index_metric="L2",
    )
    index = FaissIndex.build(x, params)
    assert index.ntotal == 300  # the sample only trains the quantizer; every vector is added
    assert_top_k(brute_scores(x, q, "L2"), *index.search(q, 10), 10, "L2")


# ---------------------------------------------------------------------------------------------
# persistence


@pytest.mark.parametrize(
    "params",
    [
        KNNParams(index_metric="INNER_PRODUCT"),
        KNNParams(index_metric="L2", query_batch_size=7),
        KNNParams(index_metric="COSINE"),
        # nprobe < nlist: an approximate search, so the round trip must keep nprobe
        KNNParams(index_type="faiss.IVFFlat", faiss_index_ivf_nlists=10, nprobe=2),
        KNNParams(index_type="faiss.IVFFlat", index_metric="COSINE", nprobe=3),
    ],
    ids=["ip", "l2", "cosine", "ivf", "ivf-cosine"],
)
def test_save_load_round_trip(data, tmp_path, params):
    x, q = data
    index = FaissIndex.build(x, params)
    before = index.search(q, 10)
    path = index.save(tmp_path / "knn")
    assert sorted(p.name for p in path.iterdir()) == [".recsys", "config.json", "index.faiss"]
    loaded = FaissIndex.load(path)
    assert loaded.params == index.params
    assert (loaded.metric, loaded.ntotal, loaded.dim) == (index.metric, index.ntotal, index.dim)
    after = loaded.search(q, 10)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    # nothing but the target is left in the parent directory (atomic write, no temp dirs)
    assert [p.name for p in tmp_path.iterdir()] == ["knn"]


def test_save_overwrites_existing(data, tmp_path):
    x, q = data
    FaissIndex.build(x[:10], KNNParams()).save(tmp_path / "knn")
    FaissIndex.build(x, KNNParams(index_metric="L2")).save(tmp_path / "knn")
    loaded = FaissIndex.load(tmp_path / "knn")
    assert loaded.ntotal == 300 and loaded.metric == "L2"
    assert [p.name for p in tmp_path.iterdir()] == ["knn"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.update(format_version=KNN_FORMAT_VERSION + 1),
        lambda m: m.update(format="recsys.fm"),
        lambda m: m.pop("format_version"),
    ],
    ids=["version", "format", "no-version"],
)
def test_load_rejects_tampered_format(data, tmp_path, tamper):
    x, _ = data
    path = FaissIndex.build(x, KNNParams()).save(tmp_path / "knn")
    meta = json.loads((path / "config.json").read_text())
    tamper(meta)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="expected format recsys.knn.faiss v1"):
        FaissIndex.load(path)


def test_load_missing_or_corrupt(tmp_path):
    with pytest.raises(ModelFormatError, match="not a saved recsys k-NN index"):
        FaissIndex.load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not a saved recsys k-NN index"):
        FaissIndex.load(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------
# bad input


def test_nan_vectors_rejected():
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(DataError, match="vectors contain NaN or infinite values"):
        FaissIndex.build(x, KNNParams())
    x[2, 1] = np.inf
    with pytest.raises(DataError, match="NaN or infinite"):
        FaissIndex.build(x, KNNParams())


def test_nan_queries_rejected(data):
    x, q = data
    index = FaissIndex.build(x, KNNParams())
    bad = q.copy()
    bad[5, 0] = np.nan
    with pytest.raises(DataError, match="queries contain NaN or infinite values"):
        index.search(bad, 3)


def test_wrong_dimension_rejected(data):
    x, q = data
    index = FaissIndex.build(x, KNNParams())
    with pytest.raises(DataError, match="queries have dimension 5 but the index holds 8-d vectors"):
        index.search(q[:, :5], 3)
    with pytest.raises(DataError, match="must be a 2-D numeric array"):
        index.search(q.reshape(57, 2, 4), 3)


@pytest.mark.parametrize("k", [0, -1, 2.0, "3", None])
def test_bad_k_rejected(data, k):
    x, q = data
    index = FaissIndex.build(x, KNNParams())
    with pytest.raises(DataError, match="k must be a positive integer"):
        index.search(q, k)


def test_numpy_integer_k_accepted(data):
    x, q = data
    index = FaissIndex.build(x, KNNParams())
    np.testing.assert_array_equal(index.search(q, np.int64(4))[0], index.search(q, 4)[0])


def test_empty_and_bad_shape_vectors_rejected():
    with pytest.raises(DataError, match="zero vectors"):
        FaissIndex.build(np.zeros((0, 4), dtype=np.float32), KNNParams())
    with pytest.raises(DataError, match="must be a 2-D numeric array"):
        FaissIndex.build(np.zeros((2, 2, 2), dtype=np.float32), KNNParams())


def test_float64_and_noncontiguous_inputs(data):
    """float64 / strided inputs are converted, giving the float32 results."""
    x, q = data
    a = FaissIndex.build(x, KNNParams()).search(q, 5)
    x64 = np.asfortranarray(x.astype(np.float64))
    b = FaissIndex.build(x64, KNNParams()).search(q.astype(np.float64)[::1], 5)
    np.testing.assert_array_equal(a[0], b[0])
    c = FaissIndex.build(x, KNNParams()).search(np.repeat(q, 2, axis=0)[::2], 5)
    np.testing.assert_array_equal(a[0], c[0])


# ---------------------------------------------------------------------------------------------
# search with exclusion: KNNIndex.search(..., exclude=), once for every index
# ---------------------------------------------------------------------------------------------
def _int_case(rng, n_items=300, n_q=70, d=6, excl_density=0.2):
    """Small-integer vectors: every inner product is exact in float32 and ties are common."""
    items = rng.integers(-3, 4, size=(n_items, d)).astype(np.float32)
    q = rng.integers(-3, 4, size=(n_q, d)).astype(np.float32)
    excl = sp.random(n_q, n_items, density=excl_density, format="csr", random_state=3, dtype=bool)
    return items, q, excl


@pytest.mark.parametrize("k", [1, 10, 100, 290, 400])
@pytest.mark.parametrize("kind", ["faiss", "brute"])
def test_search_excluding_equals_brute_force_with_ties(k, kind):
    rng = np.random.default_rng(0)
    items, q, excl = _int_case(rng)
    index = FaissIndex.build(items, KNNParams()) if kind == "faiss" else BruteIndex(items)
    ids, scores = index.search(q, k, exclude=excl)
    ref_ids, ref_scores = knn_brute_force(items, q, k, exclude=excl)
    assert ids.shape == scores.shape == (len(q), min(k, 300))
    np.testing.assert_array_equal(ids, ref_ids)  # same ids, same order (ties by id), same -1 padding
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_each_query_is_searched_only_as_deep_as_it_needs():
    """A few heavy raters do not make every query deep: groups by excluded count."""
    rng = np.random.default_rng(7)
    items = rng.normal(size=(2000, 5)).astype(np.float32)  # no ties: no tie re-searches
    q = rng.normal(size=(5000, 5)).astype(np.float32)
    rows = [rng.choice(2000, size=1000 if r < 3 else 2, replace=False) for r in range(len(q))]
    excl = sp.csr_matrix((np.ones(sum(map(len, rows)), bool), np.concatenate(rows),
                          np.r_[0, np.cumsum([len(r) for r in rows])]), shape=(len(q), 2000))  # fmt: skip
    index = BruteIndex(items)
    ids, _ = index.search(q, 10, exclude=excl)
    deep = [n for n, depth in index.calls if depth > 100]
    assert sum(deep) == 3  # only the three heavy raters are searched deep
    sample = [0, 1, 2, 3, 4999]
    np.testing.assert_array_equal(ids[sample], knn_brute_force(items, q[sample], 10, exclude=excl[sample])[0])


def test_a_query_gets_the_same_list_alone_or_in_a_batch():
    rng = np.random.default_rng(6)
    items, q, excl = _int_case(rng, n_items=200, n_q=300, d=4)
    index = FaissIndex.build(items, KNNParams(query_batch_size=64))
    ids, scores = index.search(q, 20, exclude=excl)
    for r in (0, 63, 64, 299):
        i1, s1 = index.search(q[r], 20, exclude=excl[r])
        np.testing.assert_array_equal(i1[0], ids[r])
        np.testing.assert_array_equal(s1[0], scores[r])


def test_everything_excluded_gives_empty_rows():
    rng = np.random.default_rng(2)
    items, q, _ = _int_case(rng, n_items=20, n_q=5)
    everything = sp.csr_matrix(np.ones((5, 20), dtype=bool))
    ids, scores = FaissIndex.build(items, KNNParams()).search(q, 3, exclude=everything)
    assert (ids == -1).all() and np.isneginf(scores).all()
    ids, scores = FaissIndex.build(items, KNNParams(index_metric="L2")).search(q, 3, exclude=everything)
    assert (ids == -1).all() and np.isposinf(scores).all()


@pytest.mark.parametrize("metric", ["L2", "COSINE"])
def test_exclusion_with_other_metrics_equals_brute_force(metric):
    rng = np.random.default_rng(5)
    items, q, excl = _int_case(rng, n_items=64, n_q=9)
    items += rng.normal(scale=1e-3, size=items.shape).astype(np.float32)  # no zero vectors for COSINE
    ids, scores = FaissIndex.build(items, KNNParams(index_metric=metric)).search(q, 12, exclude=excl)
    assert_top_k(knn_scores(items, q, metric), ids, scores, 12, metric, exclude=excl)


def test_a_depth_limited_index_completes_or_says_so():
    """An index that answers at most max_k neighbours (SageMaker's k-NN) is searched once at
    that depth; rows left short are completed by _complete (an error by default)."""
    rng = np.random.default_rng(3)
    items, q, excl = _int_case(rng, n_items=50, n_q=6, excl_density=0.6)
    index = BruteIndex(items, max_k=30)
    with pytest.raises(BackendError, match="need more than the 30 neighbours"):
        index.search(q, 20, exclude=excl)

    class Completing(BruteIndex):
        def _complete(self, queries, k, exclude):
            return knn_brute_force(self.x, queries, k, exclude=exclude)

    index = Completing(items, max_k=30)
    ids, _ = index.search(q, 20, exclude=excl)
    np.testing.assert_array_equal(ids, knn_brute_force(items, q, 20, exclude=excl)[0])
    assert {depth for _, depth in index.calls} == {30}


def test_exclusion_rejects_bad_input():
    rng = np.random.default_rng(4)
    items, q, excl = _int_case(rng, n_items=30, n_q=4)
    index = FaissIndex.build(items, KNNParams())
    with pytest.raises(DataError, match="exclude must have shape"):
        index.search(q, 3, exclude=excl[:2])
    with pytest.raises(DataError, match="k must be"):
        index.search(q, 0, exclude=excl)
    with pytest.raises(DataError, match="dimension"):
        index.search(q[:, :2], 3, exclude=excl)
