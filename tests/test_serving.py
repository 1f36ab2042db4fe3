"""The recommendation service over real HTTP: uvicorn on a loopback port, httpx as the client.

Every answer is checked against the in-process objects it must equal (FittedFM predictions,
the Recommender's id-level answers), every kind of bad input must get a 4xx with a JSON error
naming the problem, a reload must not disturb requests in flight, and hostile clients (half-sent
bodies, paths outside the reload root, overflowing features, non-finite models) are refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recsys.errors import ConfigError, DataError, ModelFormatError  # noqa: E402
from recsys.model import FittedFM  # noqa: E402
from recsys.saved_run import SavedRun  # noqa: E402
from recsys.serving import protocol  # noqa: E402
from recsys.serving.app import create_app  # noqa: E402
from recsys.serving.client import PredictorError, RecsysPredictor, SageMakerPredictor  # noqa: E402
from recsys.serving.config import ServingConfig  # noqa: E402
from recsys.serving.server import BackgroundServer  # noqa: E402
from recsys.serving.state import ServiceState, predict_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the rating models on the users-then-items one-hots only (no [features] groups): the tests
# build one-hot rows for /invocations
FAST = {"regressor": {"epochs": 2}, "classifier": {"epochs": 2}, "ranking": {"epochs": 2}, "features": {"recent_mean": 0}}


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (few epochs: the service, not the model, is under test)."""
    from recsys.pipeline import run

    out = tmp_path_factory.mktemp("serving") / "run"
    run(FAST, preset="tiny", out=str(out), show_progress=False)
    return out


@pytest.fixture(scope="session")
def saved(run_dir) -> SavedRun:
    return SavedRun(run_dir)


@pytest.fixture(scope="session")
def server(run_dir):
    with BackgroundServer(create_app(run_dir)) as srv:
        yield srv


@pytest.fixture(scope="session")
def small_server(run_dir):
    """Tight limits, to test them cheaply."""
    app = create_app(run_dir, ServingConfig(max_body_bytes=4096, max_instances=5, max_k=50, body_timeout=0.5))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def one_hot_rows(saved: SavedRun, n: int = 12, seed: int = 0) -> sp.csr_matrix:
    """Users-then-items one-hot rows of random (customer, video) pairs, one all-zero row and
    one row with non-unit values."""
    m = saved.mappings
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, m.n_users, n), rng.integers(0, m.n_items, n)
    X = sp.lil_matrix((n + 2, m.n_users + m.n_items))
    for r, (u, i) in enumerate(zip(users, items, strict=True)):
        X[r, u] = 1.0
        X[r, m.n_users + i] = 1.0
    X[n + 1, 3] = 0.25
    X[n + 1, m.n_users + 1] = -2.5
    return X.tocsr()


def dense_instances(X: sp.csr_matrix) -> list[dict]:
    return [{"features": row.tolist()} for row in X.toarray()]


def sparse_instances(X: sp.csr_matrix) -> list[dict]:
    out = []
    for i in range(X.shape[0]):
        row = X.getrow(i)
        out.append({"data": {"features": {"keys": row.indices.tolist(), "shape": [X.shape[1]], "values": row.data.tolist()}}})
    return out


def post_instances(http, instances: list[dict], *, jsonlines: bool = False, accept: str | None = None):
    if jsonlines:
        body, ctype = "".join(json.dumps(i) + "\n" for i in instances), protocol.JSONLINES
    else:
        body, ctype = json.dumps({"instances": instances}), protocol.JSON
    headers = {"Content-Type": ctype, **({"Accept": accept} if accept else {})}
    return http.post("/invocations", content=body.encode(), headers=headers)


def read_predictions(response) -> list[dict]:
    if response.headers["content-type"].startswith(protocol.JSONLINES):
        return [json.loads(line) for line in response.text.splitlines()]
    return response.json()["predictions"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strict_json(text: str):
    """JSON as a strict parser reads it: NaN / Infinity fail the test."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text[:200]}"))


def expected_recommendations(saved: SavedRun, customer_ids: list, k: int, exclude_seen: bool = True):
    """The library's id-level answer (the service must equal it)."""
    return saved.recommender().recommendations(customer_ids, k=k, exclude_seen=exclude_seen)


def expected_similar(saved: SavedRun, product_id, k: int):
    return saved.recommender().similar(product_id, k=k)


def raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` on a fresh connection and read until the server closes it: the
    response head and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


# ---- binding, health ---------------------------------------------------------------------------
def test_binds_loopback_by_default(server):
    import inspect

    from recsys.cli import build_parser
    from recsys.serving import serve

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    # the service's own defaults apply: 6 MB bodies (SageMaker's limit), the classifier
    assert ServingConfig.of(model=args.model, max_body_bytes=args.max_body_bytes).limits()["max_body_bytes"] == 6 * 1024 * 1024
    assert ServingConfig.of(model=args.model).model == "classifier"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert server.host == "127.0.0.1"


def test_ping_and_healthz(http, saved, run_dir):
    r = http.get("/ping")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = http.get("/healthz")
    assert str(run_dir.parent) not in r.text  # no absolute path
    h = r.json()
    assert h["run_name"] == run_dir.name
    fm = saved.model("classifier")
    assert h["run_id"] == saved.info["run_id"] and h["created"] == saved.info["created"]
    assert h["backend"] == "torch" and h["model"] == "classifier"
    assert h["feature_dim"] == fm.feature_dim == saved.mappings.n_users + saved.mappings.n_items
    assert (h["n_customers"], h["n_products"]) == (saved.mappings.n_users, saved.mappings.n_items)
    assert h["predictor_type"] == "binary_classifier" and h["limits"]["max_body_bytes"] == 6 * 1024 * 1024


# ---- /invocations ------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["dense", "sparse"])
@pytest.mark.parametrize("jsonlines", [False, True])
@pytest.mark.parametrize("accept", [None, protocol.JSONLINES])
def test_invocations_equal_the_model(http, saved, encoding, jsonlines, accept):
    fm = saved.model("classifier")
    X = one_hot_rows(saved)
    instances = dense_instances(X) if encoding == "dense" else sparse_instances(X)
    r = post_instances(http, instances, jsonlines=jsonlines, accept=accept)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(accept or protocol.JSON)
    preds = read_predictions(r)
    assert len(preds) == X.shape[0] and all(set(p) == {"score", "predicted_label"} for p in preds)
    np.testing.assert_allclose([p["score"] for p in preds], fm.predict_score(X), rtol=1e-12, atol=0)
    labels = [p["predicted_label"] for p in preds]
    assert all(isinstance(v, float) for v in labels)  # 1.0 / 0.0, as SageMaker answers
    np.testing.assert_array_equal(labels, fm.predict(X))


def test_regressor_and_ranking_models(run_dir, saved):
    """--model chooses the FM; the shape check follows its feature_dim."""
    m = saved.mappings
    for name in ("regressor", "ranking"):
        fm = saved.model(name)
        with BackgroundServer(create_app(run_dir, ServingConfig(model=name))) as srv, httpx.Client(base_url=srv.url) as http:
            assert http.get("/healthz").json()["feature_dim"] == fm.feature_dim
            X = sp.random(6, fm.feature_dim, density=0.05, format="csr", random_state=3)
            preds = read_predictions(post_instances(http, sparse_instances(X)))
            np.testing.assert_allclose([p["score"] for p in preds], fm.predict_score(X), rtol=1e-12)
            assert ("predicted_label" in preds[0]) == fm.is_classifier
            wrong = m.n_users + m.n_items + (1 if name == "regressor" else 0)
            r = post_instances(http, [{"data": {"features": {"keys": [0], "shape": [wrong], "values": [1.0]}}}])
            assert r.status_code == 400 and r.json()["error"] == "shape_mismatch"
            assert str(fm.feature_dim) in r.json()["detail"]
    assert saved.model("ranking").feature_dim > m.n_users + m.n_items


def test_predict_rows_is_the_model_on_the_used_columns(saved):
    fm = saved.model("classifier")
    X = one_hot_rows(saved, n=50, seed=4).astype(np.float64)
    scores, labels = predict_rows(fm, X)
    np.testing.assert_array_equal(scores, fm.predict_score(X))
    np.testing.assert_array_equal(labels, fm.predict(X))
    empty = sp.csr_matrix((3, fm.feature_dim))
    np.testing.assert_array_equal(predict_rows(fm, empty)[0], fm.predict_score(empty))
    X[2] *= 1e200  # the pairwise term overflows: inf - inf
    with np.errstate(all="ignore"):
        assert not np.isfinite(fm.decision_function(X[2])).any()
    with pytest.raises(protocol.RequestError, match=r"instances \[2\] score to nan") as info:
        predict_rows(fm, X)
    assert info.value.status_code == 422 and info.value.error == "non_finite_score"


@pytest.mark.parametrize("model", ["classifier", "regressor"])
def test_overflowing_features_get_a_422_not_nan(run_dir, saved, model):
    """Huge finite feature values: a JSON 4xx naming the problem, never 200 with NaN."""
    fm = saved.model(model)
    with BackgroundServer(create_app(run_dir, ServingConfig(model=model))) as srv, httpx.Client(base_url=srv.url) as http:
        ok = sparse([0, 1], [1.0, 1.0], shape=fm.feature_dim)
        huge = sparse([0, saved.mappings.n_users], [1e200, 1e200], shape=fm.feature_dim)
        r = http.post("/invocations", content=body_of([ok, huge]), headers=J)
        assert r.status_code == 422 and strict_json(r.text)["error"] == "non_finite_score", r.text
        assert "instances [1] score to" in r.json()["detail"]
        r = http.post("/invocations", content=body_of([ok]), headers=J)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["predictions"][0]["score"], fm.predict_score(sp.csr_matrix(
            ([1.0, 1.0], [0, 1], [0, 2]), shape=(1, fm.feature_dim)))[0], rtol=1e-12)  # fmt: skip


def test_answers_never_hold_nan():
    with pytest.raises(ValueError):
        protocol.encode_predictions(np.array([0.5, np.nan]), None)


# ---- /recommendations, /similar ------------------------------------------------------------------
def as_frame_rows(payload: dict) -> list[tuple]:
    """The rows of an answer as the library's frame has them; a fallback row's measure is its
    ``popularity`` (its ``score`` must be null: a count is not a model score)."""
    rows = []
    popular = payload["source"] == "popularity"
    for r in payload["recommendations"]:
        assert (r["score"] is None) == popular and ("popularity" in r) == popular
        value = r["popularity"] if popular else r["score"]
        rows.append((payload["customer_id"], r["rank"], r["product_id"], r["product_title"], value, payload["source"]))
    return rows


@pytest.mark.parametrize("k,exclude_seen", [(10, True), (3, False), (1000, True)])
def test_recommendations_equal_the_recommender(http, saved, k, exclude_seen):
    """Model customers, customers outside the model (folded in) and unknown ids: the service
    answers what the library's id-level API gives."""
    rec = saved.recommender()
    customers = saved.mappings.customer_ids.tolist()
    others = rec.histories.customer_ids.tolist()
    unknown = [10**12, -1]
    chosen = customers[:5] + customers[-2:] + others[:3] + others[-2:] + unknown
    expected = expected_recommendations(saved, chosen, k, exclude_seen)
    got = []
    for cid in chosen:
        r = http.get(f"/recommendations/{cid}", params={"k": k, "exclude_seen": str(exclude_seen).lower()})
        assert r.status_code == 200, r.text
        body = strict_json(r.text)
        assert (body["source"] == "popularity") == (cid in unknown) and body["customer_id"] == cid
        assert (body["source"] == "model") == (cid in customers)
        got += as_frame_rows(body)
    want = [
        (c.item() if isinstance(c, np.generic) else c, int(rk), p, t if isinstance(t, str) else None, float(s), src)
        for c, rk, p, t, s, src in expected.itertuples(index=False)
    ]
    assert [g[:4] + g[5:] for g in got] == [w[:4] + w[5:] for w in want]
    scored = [i for i, w in enumerate(want) if w[5] != "popularity"]
    np.testing.assert_allclose([got[i][4] for i in scored], [want[i][4] for i in scored], rtol=1e-12)
    popularity = dict(zip(saved.mappings.product_ids, rec.item_popularity, strict=True))
    assert all(g[4] == popularity[g[2]] for g in got if g[5] == "popularity")


def test_an_anonymous_session_is_folded_in_from_what_it_watched(http, saved):
    rec = saved.recommender()
    pids = saved.mappings.product_ids.tolist()
    watched = [pids[3], pids[17], pids[5]]
    r = http.post("/recommendations", json={"recent": [*watched, "no-such-video"], "k": 7})
    assert r.status_code == 200, r.text
    body = strict_json(r.text)
    ids, scores = rec.recommend_history([[3, 17, 5]], k=7)
    assert body["source"] == "fold_in" and body["ignored"] == ["no-such-video"]
    assert [x["product_id"] for x in body["recommendations"]] == [pids[i] for i in ids[0]]
    np.testing.assert_allclose([x["score"] for x in body["recommendations"]], scores[0], rtol=1e-12)
    assert not set(watched) & {x["product_id"] for x in body["recommendations"]}
    nothing = http.post("/recommendations", json={"recent": [], "k": 3}).json()
    assert nothing["source"] == "popularity" and len(nothing["recommendations"]) == 3
    for bad in ({"recent": "x"}, {"recent": [1.5]}, {"recent": [], "k": 0}, {"k": 3}, {"recent": [], "extra": 1}):
        assert http.post("/recommendations", json=bad).status_code in (400, 422), bad
    assert http.post("/recommendations", content=b"recent", headers={"Content-Type": "text/plain"}).status_code == 415


def test_customer_ids_come_back_as_the_run_holds_them(http, saved):
    """The run's customer ids are integers: every answer has an integer customer_id (known,
    written with a leading zero, or unknown); text that is not an integer is refused."""
    assert saved.mappings.customer_ids.dtype.kind == "i"
    cid = int(saved.mappings.customer_ids[7])
    a = http.get(f"/recommendations/{cid}", params={"k": 5}).json()
    b = http.get(f"/recommendations/0{cid}", params={"k": 5}).json()
    assert a == b and a["source"] == "model" and a["customer_id"] == cid and type(a["customer_id"]) is int
    unknown = http.get("/recommendations/000999999999999", params={"k": 2}).json()
    assert unknown["source"] == "popularity" and unknown["customer_id"] == 999999999999
    for text in ("nobody", "12.0", "1e3", str(2**63)):
        r = http.get(f"/recommendations/{text}")
        assert r.status_code == 422 and r.json()["error"] == "invalid_customer_id", (text, r.text)


def test_similar_equals_the_recommender(http, saved):
    for pid in saved.mappings.product_ids[:4].tolist():
        expected = expected_similar(saved, pid, 5)
        body = strict_json(http.get(f"/similar/{pid}", params={"k": 5}).text)
        assert body["product_id"] == pid
        assert [s["product_id"] for s in body["similar"]] == expected["product_id"].tolist()
        assert [s["rank"] for s in body["similar"]] == expected["rank"].tolist()
        assert [s["product_title"] for s in body["similar"]] == [t if isinstance(t, str) else None for t in expected["product_title"]]
        np.testing.assert_allclose([s["score"] for s in body["similar"]], expected["score"], rtol=1e-12)


# ---- bad input: always 4xx + {"error", "detail"} ---------------------------------------------------
J = {"Content-Type": "application/json"}


def sparse(keys, values, shape):
    return {"data": {"features": {"keys": keys, "shape": [shape], "values": values}}}


def body_of(instances) -> bytes:
    return json.dumps({"instances": instances}).encode()


def bad_cases(d: int) -> list:
    """The bad requests for a model with feature_dim ``d``."""
    D = str(d).encode()
    return [
        # (id, method, path, body or None, headers, status, error)
        ("malformed json", "POST", "/invocations", b'{"instances": [', J, 400, "invalid_json"),
        ("not utf-8", "POST", "/invocations", b'{"instances": ["\xff"]}', J, 400, "invalid_json"),
        ("deeply nested", "POST", "/invocations", b"[" * 100_000 + b"]" * 100_000, J, 400, "invalid_json"),
        ("text/csv", "POST", "/invocations", b"1,2,3", {"Content-Type": "text/csv"}, 415, "unsupported_media_type"),
        ("no content type", "POST", "/invocations", b"{}", {"Content-Type": ""}, 415, "unsupported_media_type"),
        ("accept csv", "POST", "/invocations", b"{}", {**J, "Accept": "text/csv"}, 406, "not_acceptable"),
        ("not an object", "POST", "/invocations", b"[1, 2]", J, 400, "invalid_payload"),
        ("no instances key", "POST", "/invocations", b'{"rows": []}', J, 400, "invalid_payload"),
        ("empty instances", "POST", "/invocations", body_of([]), J, 400, "empty_instances"),
        ("empty jsonlines", "POST", "/invocations", b"\n\n", {"Content-Type": "application/jsonlines"}, 400, "empty_instances"),
        ("instance not an object", "POST", "/invocations", body_of([[1.0, 2.0]]), J, 400, "invalid_instance"),
        ("key out of range", "POST", "/invocations", body_of([sparse([0, d], [1, 1], d)]), J, 400, "key_out_of_range"),
        ("negative key", "POST", "/invocations", body_of([sparse([-1], [1], d)]), J, 400, "key_out_of_range"),
        ("huge key", "POST", "/invocations", body_of([sparse([10**30], [1], d)]), J, 400, "key_out_of_range"),
        ("float key", "POST", "/invocations", body_of([sparse([1.0], [1], d)]), J, 400, "invalid_instance"),
        ("bool key", "POST", "/invocations", body_of([sparse([True], [1], d)]), J, 400, "invalid_instance"),
        ("duplicate keys", "POST", "/invocations", body_of([sparse([3, 3], [1, 1], d)]), J, 400, "duplicate_keys"),
        ("keys/values lengths", "POST", "/invocations", body_of([sparse([1, 2, 3], [1, 1], d)]), J, 400, "length_mismatch"),
        ("shape != feature_dim", "POST", "/invocations", body_of([sparse([1], [1], shape=d + 1)]), J, 400, "shape_mismatch"),
        ("shape not a list", "POST", "/invocations", body_of([{"data": {"features": {"keys": [1], "shape": d, "values": [1]}}}]), J, 400, "invalid_instance"),
        ("dense too short", "POST", "/invocations", body_of([{"features": [0.0] * (d - 1)}]), J, 400, "shape_mismatch"),
        ("dense too long", "POST", "/invocations", body_of([{"features": [0.0] * (d + 1)}]), J, 400, "shape_mismatch"),
        ("NaN literal", "POST", "/invocations", b'{"instances": [{"data": {"features": {"keys": [1], "shape": [' + D + b'], "values": [NaN]}}}]}', J, 400, "invalid_value"),
        ("Infinity literal", "POST", "/invocations", b'{"instances": [{"features": [Infinity]}]}', J, 400, "invalid_value"),
        ("-Infinity literal", "POST", "/invocations", b'{"instances": [{"features": [-Infinity]}]}', J, 400, "invalid_value"),
        ("overflowing number", "POST", "/invocations", b'{"instances": [{"data": {"features": {"keys": [1], "shape": [' + D + b'], "values": [1e999]}}}]}', J, 400, "invalid_value"),
        ("huge integer", "POST", "/invocations", body_of([sparse([1], [10**400], d)]), J, 400, "invalid_value"),
        ("5000-digit integer", "POST", "/invocations", b'{"instances": [{"features": [' + b"9" * 5000 + b"]}]}", J, 400, "invalid_json"),
        ("boolean value", "POST", "/invocations", body_of([sparse([1, 2], [1.0, True], d)]), J, 400, "invalid_value"),
        ("string value", "POST", "/invocations", body_of([sparse([1], ["1.0"], d)]), J, 400, "invalid_value"),
        ("null value", "POST", "/invocations", body_of([{"features": [None] * d}]), J, 400, "invalid_value"),
        ("nested value", "POST", "/invocations", body_of([sparse([1], [[1.0]], d)]), J, 400, "invalid_value"),
        ("values not a list", "POST", "/invocations", body_of([sparse([1], "1", d)]), J, 400, "invalid_instance"),
        ("jsonlines bad line", "POST", "/invocations", b'{"features": []}\n{oops\n', {"Content-Type": "application/jsonlines"}, 400, "invalid_json"),
        ("k = 0", "GET", "/recommendations/1?k=0", None, {}, 422, "invalid_parameter"),
        ("k < 0", "GET", "/recommendations/1?k=-5", None, {}, 422, "invalid_parameter"),
        ("k absurd", "GET", "/recommendations/1?k=1000000000000", None, {}, 422, "invalid_parameter"),
        ("k absurder", "GET", "/recommendations/1?k=1" + "0" * 40, None, {}, 422, "invalid_parameter"),
        ("k text", "GET", "/recommendations/1?k=ten", None, {}, 422, "invalid_parameter"),
        ("k float", "GET", "/recommendations/1?k=2.5", None, {}, 422, "invalid_parameter"),
        ("exclude_seen text", "GET", "/recommendations/1?exclude_seen=maybe", None, {}, 422, "invalid_parameter"),
        ("similar k = 0", "GET", "/similar/x?k=0", None, {}, 422, "invalid_parameter"),
        ("similar k absurd", "GET", "/similar/x?k=99999999", None, {}, 422, "invalid_parameter"),
        ("unknown product", "GET", "/similar/NO-SUCH-VIDEO", None, {}, 404, "unknown_product"),
        ("unknown route", "GET", "/nothing/here", None, {}, 404, "not_found"),
        ("wrong method", "GET", "/invocations", None, {}, 405, "method_not_allowed"),
        ("customer id not an integer", "GET", "/recommendations/nobody", None, {}, 422, "invalid_customer_id"),
        ("reload bad json", "POST", "/reload", b"{nope", J, 400, "invalid_json"),
        ("reload deeply nested", "POST", "/reload", b"[" * 100_000 + b"]" * 100_000, J, 400, "bad_request"),
        ("reload not an object", "POST", "/reload", b"[1]", J, 400, "invalid_payload"),
        ("reload unknown key", "POST", "/reload", b'{"path": "/tmp"}', J, 400, "invalid_payload"),
        ("reload model_dir a number", "POST", "/reload", b'{"model_dir": 5}', J, 400, "invalid_payload"),
        ("reload bad model", "POST", "/reload", b'{"model": "gbdt"}', J, 400, "invalid_payload"),
        ("reload text/plain", "POST", "/reload", b"/tmp/x", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("reload a path without a root", "POST", "/reload", b'{"model_dir": "/tmp"}', J, 403, "reload_path_not_allowed"),
        ("reload huge body", "POST", "/reload", b'{"model_dir": "' + b"x" * (7 << 20) + b'"}', J, 413, "body_too_large"),
    ]


@pytest.fixture(scope="session")
def dim(saved) -> int:
    """The feature_dim of the model the service answers /invocations with."""
    return saved.model("classifier").feature_dim


@pytest.mark.parametrize("name", [c[0] for c in bad_cases(2)])
def test_bad_input_is_a_4xx_with_a_json_error(http, dim, name):
    _, method, path, body, headers, status, error = next(c for c in bad_cases(dim) if c[0] == name)
    r = http.request(method, path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert payload["error"] == error and payload["detail"], payload
    assert "/tmp" not in json.dumps(payload["detail"])  # no path of the server's in any answer


def test_bad_input_messages_name_the_problem(http, dim):
    r = http.post("/invocations", content=body_of([sparse([1], [1], dim), sparse([0, dim + 9], [1, 1], dim)]), headers=J)
    assert r.json()["detail"] == f"instances[1].data.features.keys holds {dim + 9}; keys must be in [0, {dim})"
    r = http.post("/invocations", content=body_of([sparse([1, 2], [1.0, True], dim)]), headers=J)
    assert "values[1] is true (boolean)" in r.json()["detail"]
    r = http.post("/invocations", content=body_of([sparse([1], [1], shape=7)]), headers=J)
    assert f"shape is [7] but the model's feature_dim is {dim}" in r.json()["detail"]


def test_limits(small_server, dim):
    """Body size (Content-Length and chunked), instance count and k limits."""
    url = small_server.url
    with httpx.Client(base_url=url) as http:
        ok = body_of([sparse([1], [1.0], dim)])
        exact = ok + b" " * (4096 - len(ok))
        assert http.post("/invocations", content=exact, headers=J).status_code == 200
        r = http.post("/invocations", content=exact + b" ", headers=J)
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"

        def chunks():
            for _ in range(10):
                yield b" " * 1000

        r = http.post("/invocations", content=chunks(), headers=J)  # no Content-Length
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert http.post("/invocations", content=(c for c in [ok]), headers=J).status_code == 200
        r = http.post("/invocations", content=body_of([sparse([1], [1.0], dim)] * 6), headers=J)
        assert r.status_code == 413 and r.json()["error"] == "too_many_instances"
        lines = b'{"features": [1]}\n' * 6
        r = http.post("/invocations", content=lines, headers={"Content-Type": "application/jsonlines"})
        assert r.status_code == 413 and r.json()["error"] == "too_many_instances"
        assert http.get("/recommendations/1", params={"k": 50}).status_code == 200
        assert http.get("/recommendations/1", params={"k": 51}).status_code == 422


def test_oversized_body_is_refused_before_it_is_read(server):
    """A declared Content-Length over the limit is answered, and the connection closed, without
    the server waiting for (or buffering) the 100 MB that were announced: only a prefix is sent."""
    head, body = raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                           b"Content-Length: 100000000\r\n\r\n" + b'{"instances": [')  # fmt: skip
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"] == "body_too_large"


@pytest.mark.parametrize("path", ["/invocations", "/reload"])
def test_half_sent_bodies_are_cut_off(small_server, path):
    """Clients that send half a body and then nothing get 408 once ``body_timeout`` has passed
    and their connections are closed (raw_exchange reads to EOF); the server keeps answering."""
    request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Content-Length: 1000\r\n\r\n").encode() + b'{"instances": [' + b" " * 400  # fmt: skip
    results: list[tuple[bytes, bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(raw_exchange(small_server.port, request))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    for head, body in results:
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert json.loads(body) == {"error": "body_timeout", "detail": "the body did not arrive within 0.5 s; send the whole body at once"}
    assert httpx.get(small_server.url + "/ping").status_code == 200


def test_half_sent_request_heads_are_cut_off(run_dir):
    """A client that sends half a request head (and one that sends nothing) is disconnected
    after keep_alive_timeout; a keep-alive connection still serves several requests."""
    app = create_app(run_dir, ServingConfig(keep_alive_timeout=0.5))
    with BackgroundServer(app) as srv:
        assert raw_exchange(srv.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n") == (b"", b"")
        assert raw_exchange(srv.port, b"") == (b"", b"")
        with httpx.Client(base_url=srv.url) as http:
            assert [http.get("/ping").status_code for _ in range(3)] == [200] * 3


def test_random_garbage_never_yields_a_5xx(http, dim):
    rng = np.random.default_rng(0)
    valid = body_of(sparse_instances(sp.random(3, dim, density=0.02, format="csr", random_state=0)))
    statuses = set()
    for _ in range(150):
        b = bytearray(valid)
        for _ in range(rng.integers(1, 6)):
            op, pos = rng.integers(0, 3), rng.integers(0, len(b))
            if op == 0:
                b[pos] = int(rng.integers(0, 256))
            elif op == 1:
                del b[pos : pos + int(rng.integers(1, 20))]
            else:
                b[pos:pos] = rng.choice([b"NaN", b"true", b'"x"', b"-1", b"1e999", b"[", b"}", b"null", str(dim).encode()])
        r = http.post("/invocations", content=bytes(b), headers=J)
        statuses.add(r.status_code)
        assert r.status_code < 500, (bytes(b), r.text)
        if r.status_code != 200:
            assert r.json()["error"]
    assert 400 in statuses


# ---- reload ----------------------------------------------------------------------------------
def make_variant(run_dir: Path, dest: Path, run_id: str, w0_shift: float, model: str = "classifier", nan_factors: bool = False) -> Path:
    """A copy of the run with another run id and a ``model`` whose bias moved (and whose
    factors are all NaN with ``nan_factors``)."""
    shutil.copytree(run_dir, dest)
    info = json.loads((dest / "run.json").read_text())
    info["run_id"] = run_id
    (dest / "run.json").write_text(json.dumps(info))
    fm = FittedFM.load(dest / "models" / model)
    V = np.full_like(fm.V, np.nan) if nan_factors else fm.V
    FittedFM(w0=fm.w0 + w0_shift, w=fm.w, V=V, predictor_type=fm.predictor_type, config=fm.config,
             metadata=fm.metadata).save(dest / "models" / model)  # fmt: skip
    return dest


def test_reload_swaps_the_model_without_dropping_requests(run_dir, saved, tmp_path):
    a = make_variant(run_dir, tmp_path / "a", "run-a", 0.0)
    b = make_variant(run_dir, tmp_path / "b", "run-b", 1.5)
    broken = make_variant(run_dir, tmp_path / "broken", "run-broken", 0.0)
    (broken / "models" / "classifier" / "params.npz").write_bytes(b"not an npz")
    X = one_hot_rows(saved, n=4)
    body = body_of(sparse_instances(X))
    expected = {rid: FittedFM.load(d / "models" / "classifier").predict_score(X) for rid, d in (("run-a", a), ("run-b", b))}
    customer = int(saved.mappings.customer_ids[0])
    errors: list[str] = []
    seen_scores: list[np.ndarray] = []
    stop = threading.Event()

    with BackgroundServer(create_app(a, ServingConfig(reload_root=str(tmp_path)))) as srv:

        def stream() -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as http:
                while not stop.is_set():
                    r = http.post("/invocations", content=body, headers=J)
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    seen_scores.append(np.array([p["score"] for p in r.json()["predictions"]]))
                    r = http.get(f"/recommendations/{customer}", params={"k": 5})
                    if r.status_code != 200:
                        errors.append(r.text)

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for target in ("b", str(a), "b"):  # a name below the root, or a path inside it
                time.sleep(0.2)
                r = http.post("/reload", json={"model_dir": target})
                assert r.status_code == 200, r.text
                assert r.json()["current"]["run_id"] == json.loads((tmp_path / target / "run.json").read_text())["run_id"]
                assert r.json()["current"]["run_name"] == Path(target).name
            r = http.post("/reload", json={"model_dir": "broken"})
            assert r.status_code == 422 and r.json()["error"] == "reload_failed"
            assert "broken/models/classifier/params.npz is not a readable .npz archive" in r.json()["detail"]
            assert "still serving run run-b" in r.json()["detail"]
            r = http.post("/reload", json={"model_dir": "missing"})
            assert r.status_code == 422 and "missing is not a recsys run directory (no run.json)" in r.json()["detail"]
            assert str(tmp_path) not in r.text
            time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join()
            r = http.get("/healthz")
            health = r.json()
            assert health["run_id"] == "run-b" and health["reloads"] == 3 and "no run.json" in health["last_reload_error"]
            assert str(tmp_path) not in r.text
            preds = http.post("/invocations", content=body, headers=J).json()["predictions"]
            np.testing.assert_allclose([p["score"] for p in preds], expected["run-b"], rtol=1e-12)
            # a reload with no body re-reads the current directory
            assert http.post("/reload").json()["current"]["run_id"] == "run-b"
    assert errors == []
    assert len(seen_scores) > 10
    # every answer came whole from one model or the other, never a mix
    for s in seen_scores:
        assert any(np.allclose(s, e, rtol=1e-12) for e in expected.values())


def test_reload_paths_stay_below_the_root(run_dir, tmp_path):
    """Only folders below --reload-root can be named; '..', absolute paths elsewhere and links
    leading out are refused with 403, and the served model stays."""
    root = tmp_path / "runs"
    root.mkdir()
    make_variant(run_dir, root / "a", "run-a", 0.0)
    outside = make_variant(run_dir, tmp_path / "outside", "run-outside", 0.0)
    (root / "link").symlink_to(outside)
    with BackgroundServer(create_app(root / "a", ServingConfig(reload_root=str(root)))) as srv, httpx.Client(base_url=srv.url) as http:
        for bad in ("..", "../outside", str(outside), "link", "a/../../outside", "/etc"):
            r = http.post("/reload", json={"model_dir": bad})
            assert r.status_code == 403 and r.json()["error"] == "reload_path_not_allowed", (bad, r.text)
            assert str(tmp_path) not in r.json()["detail"].replace(repr(bad), "")
        health = http.get("/healthz").json()
        assert (health["run_id"], health["run_name"], health["reloads"]) == ("run-a", "a", 0)
        assert http.post("/reload", json={"model_dir": "a/"}).status_code == 200


def test_non_finite_models_are_refused(run_dir, tmp_path, capsys):
    """A model whose factors are all NaN is refused at start (a clean error; `recsys serve`
    exits 2 with one line) and at /reload (422, the old model keeps serving)."""
    from recsys.cli import main

    good = make_variant(run_dir, tmp_path / "good", "run-good", 0.0)
    nan_served = make_variant(run_dir, tmp_path / "nan-classifier", "run-nan", 0.0, nan_factors=True)
    nan_recommender = make_variant(run_dir, tmp_path / "nan-ranking", "run-nan-ranking", 0.0, model="ranking", nan_factors=True)
    for bad in (nan_served, nan_recommender):
        with pytest.raises(ModelFormatError, match="holds NaN or infinite parameters"):
            create_app(bad)
    assert main(["serve", "--model-dir", str(nan_served), "--port", str(free_port()), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "classifier holds NaN or infinite parameters" in err and "\n" not in err
    with BackgroundServer(create_app(good, ServingConfig(reload_root=str(tmp_path)))) as srv, httpx.Client(base_url=srv.url) as http:
        for bad, model in (("nan-classifier", "classifier"), ("nan-ranking", "ranking")):
            r = http.post("/reload", json={"model_dir": bad})
            assert r.status_code == 422 and r.json()["error"] == "reload_failed"
            assert f"models/{model} holds NaN or infinite parameters" in r.json()["detail"]
        assert http.get("/healthz").json()["run_id"] == "run-good"
        r = http.post("/invocations", content=body_of([sparse([0], [1.0], shape=saved_dim(good))]), headers=J)
        assert r.status_code == 200 and np.isfinite(strict_json(r.text)["predictions"][0]["score"])


def saved_dim(run: Path) -> int:
    return FittedFM.load(run / "models" / "classifier").feature_dim


def test_sighup_reloads_the_served_directory(run_dir, tmp_path):
    """`recsys serve` in its own process: SIGHUP re-reads the directory (here a symlink that
    was switched to another run)."""
    a = make_variant(run_dir, tmp_path / "a", "run-a", 0.0)
    b = make_variant(run_dir, tmp_path / "b", "run-b", 0.5)
    link = tmp_path / "current"
    link.symlink_to(a)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", "--model-dir", str(link), "--port", str(port), "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()
                try:
                    if http.get("/ping").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
            assert http.get("/healthz").json()["run_id"] == "run-a"
            link.unlink()
            link.symlink_to(b)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while http.get("/healthz").json()["run_id"] != "run-b":
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            assert http.get("/ping").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_cli_serve_fails_fast_on_a_bad_directory(tmp_path):
    from recsys.cli import main

    assert main(["serve", "--model-dir", str(tmp_path), "--port", str(free_port()), "-q"]) == 2


def test_bad_serve_options_are_one_line_errors(run_dir, tmp_path, capsys):
    """Bad options fail before anything is loaded, as a ConfigError (the CLI prints one line)."""
    from recsys.cli import main
    from recsys.serving import serve

    assert main(["serve", "--model-dir", str(run_dir), "--port", "99999", "-q"]) == 2
    err = capsys.readouterr().err
    assert err == "error: port must be an integer in 0..65535, got 99999\n"
    assert main(["serve", "--model-dir", str(run_dir), "--model", "gbdt", "--port", str(free_port()), "-q"]) == 2
    assert capsys.readouterr().err == "error: model must be one of regressor, classifier, ranking, got 'gbdt'\n"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            ({"port": -1}, "port must be an integer in 0..65535"),
            ({"port": port}, f"cannot listen on 127.0.0.1:{port}"),
            ({"host": "no-such-host.invalid"}, "host 'no-such-host.invalid' is not an address"),
            ({"workers": 0}, "workers must be a positive integer"),
            ({"log_level": "loud"}, "log_level must be one of"),
            ({"max_body_bytes": 0}, "max_body_bytes must be a positive integer"),
            ({"body_timeout": float("inf")}, "body_timeout must be a positive number of seconds"),
            ({"model": "gbdt"}, "model must be one of regressor, classifier, ranking"),
            ({"reload_root": str(tmp_path / "nowhere")}, "is not a directory"),
            ({"max_bodies": 3}, "unknown serving option(s) max_bodies"),
        ]
        for options, message in cases:
            with pytest.raises(ConfigError) as info:
                serve(tmp_path / "not-a-run", **{"port": free_port(), **options})
            assert message in str(info.value) and "\n" not in str(info.value)


# ---- clients ---------------------------------------------------------------------------------
def test_recsys_predictor_against_the_server(server, saved):
    fm = saved.model("classifier")
    X = one_hot_rows(saved, n=30, seed=9)
    with RecsysPredictor(server.url) as p:
        assert p.ping() and p.health()["run_id"] == saved.info["run_id"]
        for data in (X, X.toarray(), {"instances": sparse_instances(X)}, sparse_instances(X), body_of(dense_instances(X))):
            out = p.predict(data)
            assert set(out) == {"predictions"} and len(out["predictions"]) == X.shape[0]
            np.testing.assert_allclose([q["score"] for q in out["predictions"]], fm.predict_score(X), rtol=1e-12)
        scores, labels = p.predict_arrays(X, initial_args={"ContentType": protocol.JSONLINES, "Accept": protocol.JSONLINES})
        np.testing.assert_allclose(scores, fm.predict_score(X), rtol=1e-12)
        np.testing.assert_array_equal(labels, fm.predict(X))
    with RecsysPredictor(server.url, max_payload_bytes=500, format="dense") as small:
        with pytest.raises(DataError, match="alone encodes"):
            small.predict(X)
    # a matrix bigger than max_payload_bytes goes in several requests, in order
    with RecsysPredictor(server.url, max_payload_bytes=400, accept=protocol.JSONLINES) as small:
        np.testing.assert_allclose(small.predict_arrays(X)[0], fm.predict_score(X), rtol=1e-12)
    with RecsysPredictor(server.url) as p:
        cid = int(saved.mappings.customer_ids[2])
        recs = p.recommendations(cid, k=4)
        assert recs["customer_id"] == cid and len(recs["recommendations"]) == 4
        assert p.recommendations(10**12, k=3)["source"] == "popularity"
        with pytest.raises(PredictorError) as info:
            p.recommendations("someone new")
        assert info.value.status_code == 422 and info.value.error == "invalid_customer_id"
        pid = saved.mappings.product_ids[0]
        assert len(p.similar(pid, k=3)["similar"]) == 3
        with pytest.raises(PredictorError) as info:
            p.predict({"instances": [sparse([fm.feature_dim], [1.0], fm.feature_dim)]})
        assert info.value.status_code == 400 and info.value.error == "key_out_of_range"
        with pytest.raises(PredictorError) as info:
            p.similar("nope")
        assert info.value.status_code == 404
    with RecsysPredictor(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        assert dead.ping() is False
        with pytest.raises(PredictorError, match="failed"):
            dead.health()


class ForwardingRuntime:
    """A stand-in ``sagemaker-runtime`` client that answers InvokeEndpoint from the recsys
    service over HTTP (which speaks the SageMaker FM protocol) and records the calls."""

    def __init__(self, url: str, fail_with: Exception | None = None):
        self.url = url
        self.calls: list[dict] = []
        self.fail_with = fail_with

    def invoke_endpoint(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        r = httpx.post(self.url + "/invocations", content=kwargs["Body"],
                       headers={"Content-Type": kwargs["ContentType"], "Accept": kwargs["Accept"]})  # fmt: skip
        assert r.status_code == 200, r.text
        return {"Body": io.BytesIO(r.content), "ContentType": r.headers["content-type"]}


def test_sagemaker_predictor_with_a_fake_runtime(server, saved):
    fm = saved.model("classifier")
    X = one_hot_rows(saved, n=20, seed=2)
    runtime = ForwardingRuntime(server.url)
    p = SageMakerPredictor("my-fm-endpoint", runtime_client=runtime, max_payload_bytes=600)
    out = p.predict(X)
    np.testing.assert_allclose([q["score"] for q in out["predictions"]], fm.predict_score(X), rtol=1e-12)
    assert len(runtime.calls) > 1 and all(len(c["Body"]) <= 600 for c in runtime.calls)
    assert {(c["EndpointName"], c["ContentType"], c["Accept"]) for c in runtime.calls} == {
        ("my-fm-endpoint", "application/json", "application/json")
    }
    first = json.loads(runtime.calls[0]["Body"])["instances"][0]
    assert first == sparse_instances(X[:1].astype(np.float32))[0]
    jl = SageMakerPredictor("ep", runtime_client=runtime, accept=protocol.JSONLINES, content_type=protocol.JSONLINES)
    np.testing.assert_array_equal(jl.predict_arrays(X)[1], fm.predict(X))


def test_sagemaker_predictor_wraps_an_sdk_predictor(server, saved):
    pytest.importorskip("sagemaker")
    from types import SimpleNamespace

    from botocore.exceptions import ClientError
    from sagemaker.predictor import Predictor

    runtime = ForwardingRuntime(server.url)
    sdk = Predictor("sdk-endpoint", sagemaker_session=SimpleNamespace(sagemaker_runtime_client=runtime))
    p = SageMakerPredictor(predictor=sdk)
    X = one_hot_rows(saved, n=3)
    np.testing.assert_allclose(p.predict_arrays(X)[0], saved.model("classifier").predict_score(X), rtol=1e-12)
    assert runtime.calls[-1]["EndpointName"] == "sdk-endpoint"
    error = ClientError(
        {"Error": {"Code": "ModelError", "Message": "Received client error (400)"}, "ResponseMetadata": {"HTTPStatusCode": 424}},
        "InvokeEndpoint",
    )  # fmt: skip
    failing = SageMakerPredictor("ep", runtime_client=ForwardingRuntime(server.url, fail_with=error))
    with pytest.raises(PredictorError, match="invoking SageMaker endpoint ep failed") as info:
        failing.predict(X)
    assert info.value.status_code == 424 and info.value.error == "ModelError"


# ---- the protocol, shared with the SageMaker endpoint client --------------------------------------
def test_one_protocol_implementation():
    from backends.sagemaker import endpoint

    for name in ("encode_rows", "batch_payloads", "parse_predictions", "predictions_to_arrays", "PAYLOAD_FORMATS"):
        assert getattr(endpoint, name) is getattr(protocol, name)


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
@pytest.mark.parametrize("ctype", [protocol.JSON, protocol.JSONLINES])
def test_encode_then_decode_round_trips(fmt, ctype):
    X = sp.random(25, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
    bodies = list(protocol.batch_payloads(X, max_bytes=1500 if fmt == "sparse" else 3000, format=fmt, content_type=ctype))
    assert len(bodies) > 1
    decoded = sp.vstack([protocol.decode_request(body, ctype, 30) for _, _, body in bodies])
    np.testing.assert_array_equal(decoded.toarray(), X.toarray().astype(np.float64))
    scores = np.linspace(0, 1, 5)
    labels = (scores >= 0.5).astype(float)
    body = protocol.encode_predictions(scores, labels, ctype)
    preds = protocol.parse_predictions(body, 5, content_type=ctype)
    got_scores, got_labels = protocol.predictions_to_arrays(preds)
    np.testing.assert_array_equal(got_scores, scores)
    np.testing.assert_array_equal(got_labels, labels)


def test_accept_negotiation():
    assert protocol.response_media_type(None) == protocol.JSON
    assert protocol.response_media_type("*/*") == protocol.JSON
    assert protocol.response_media_type("application/jsonlines;q=0.9, application/json") == protocol.JSONLINES
    assert protocol.response_media_type("application/json;q=0, application/jsonlines") == protocol.JSONLINES
    with pytest.raises(protocol.RequestError) as info:
        protocol.response_media_type("text/html")
    assert info.value.status_code == 406


def test_workers_get_a_tcp_nodelay_socket(monkeypatch):
    """With --workers N the shared listening socket must carry IPPROTO_TCP, or asyncio leaves
    Nagle on and every keep-alive response waits ~40 ms for a delayed ACK (uvicorn #3149)."""
    import uvicorn
    import uvicorn.supervisors

    from recsys.serving import server as server_module

    seen = {}

    class FakeMultiprocess:
        def __init__(self, config, sockets):
            seen["sockets"] = sockets

        def run(self):
            sock = seen["sockets"][0]
            seen["proto"], seen["inheritable"] = sock.proto, sock.get_inheritable()
            sock.close()

    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", FakeMultiprocess)
    config = uvicorn.Config("recsys.serving.server:app_from_env", factory=True, host="127.0.0.1", port=free_port(), workers=2)
    server_module._run_workers(config)
    assert seen["proto"] == socket.IPPROTO_TCP and seen["inheritable"]


def test_reload_with_a_frozen_heap_frees_the_old_model(run_dir):
    """`recsys serve` freezes the GC heap after each load; a reload must still free the model
    it replaced."""
    import gc
    import weakref

    try:
        state = ServiceState.load(run_dir, freeze_gc=True)
        old = weakref.ref(state.current)
        previous, current = state.reload()
        assert previous["run_id"] == current["run_id"] and state.reloads == 1
        assert old() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


# ---- the FM request parser under fuzzing ------------------------------------------------------------
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False), st.text(max_size=5),
    st.sampled_from([0, 1, 5, 239, 240, -1, 1e308, 10**400]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.sampled_from(["instances", "features", "data", "keys", "shape", "values", "x"]), inner, max_size=4),
    ),
    max_leaves=30,
)
_numbers = st.lists(st.one_of(st.integers(-3, 300), st.floats(-1e300, 1e300), _scalars), max_size=8)


_ODD = {"keys": [-1, 240, 10**30, -(10**30), 1.0, True, "1"], "values": [True, None, "1", [1], 10**400, float("inf")],
        "shape": [241, 0, -1, 1.0, None]}  # fmt: skip


@st.composite
def _sparse(draw):
    """A valid sparse instance (keys and values of one length, shape [240]) with at most one
    field dropped, replaced by arbitrary JSON, one element shorter or longer, or with one
    element replaced by an odd one or by a repeat."""
    n = draw(st.integers(2, 6))
    value = st.one_of(st.floats(-1e300, 1e300, allow_nan=False), st.integers(-5, 5))
    fields = {"keys": draw(st.lists(st.integers(0, 239), min_size=n, max_size=n, unique=True)),
              "values": draw(st.lists(value, min_size=n, max_size=n)), "shape": [240]}  # fmt: skip
    name = draw(st.sampled_from(["keys", "values", "shape"]))
    action = draw(st.sampled_from(["keep", "drop", "replace", "resize", "odd", "repeat"]))
    if action == "drop":
        del fields[name]
    elif action == "replace":
        fields[name] = draw(st.one_of(_numbers, _json))
    elif action == "resize":
        fields[name] = fields[name][1:] if draw(st.booleans()) else [*fields[name], draw(value)]
    elif action in ("odd", "repeat"):
        i = len(fields[name]) - 1
        fields[name][i] = draw(st.sampled_from(_ODD[name])) if action == "odd" else fields[name][0]
    return {"data": {"features": fields}}


_instances = st.lists(st.one_of(_sparse(), st.fixed_dictionaries({"features": _numbers})), min_size=1, max_size=3)


def _decoded_or_refused(body: bytes, content_type: str) -> None:
    """decode_request either refuses with a RequestError (a 4xx) or returns a finite CSR matrix
    of the model's width; any other exception fails."""
    try:
        X = protocol.decode_request(body, content_type, 240, max_instances=50)
    except protocol.RequestError as exc:
        assert 400 <= exc.status_code < 500 and exc.error and exc.detail
        return
    assert sp.isspmatrix_csr(X) and X.shape[1] == 240 and 1 <= X.shape[0] <= 50
    assert np.isfinite(X.data).all() and (X.indices >= 0).all() and (X.indices < 240).all() and X.has_canonical_format


@settings(max_examples=500, derandomize=True, deadline=None, database=None)
@given(payload=st.one_of(_instances, _json), jsonlines=st.booleans())
def test_fuzz_request_parser_structures(payload, jsonlines):
    """Near-valid instances and arbitrary JSON (the protocol's own keys, odd numbers, nesting)."""
    if jsonlines:
        items = payload if isinstance(payload, list) else [payload]
        body = "\n".join(json.dumps(i) for i in items).encode()
    else:
        body = json.dumps(payload if not isinstance(payload, list) else {"instances": payload}).encode()
    _decoded_or_refused(body, protocol.JSONLINES if jsonlines else protocol.JSON)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(body=st.binary(max_size=300), jsonlines=st.booleans())
def test_fuzz_request_parser_bytes(body, jsonlines):
    """Arbitrary bytes, and a valid body with bytes spliced in."""
    valid = b'{"instances": [{"data": {"features": {"keys": [1, 7], "shape": [240], "values": [1.0, 2.5]}}}]}'
    for candidate in (body, valid[: len(body) % len(valid)] + body + valid[len(body) % len(valid):]):
        _decoded_or_refused(candidate, protocol.JSONLINES if jsonlines else protocol.JSON)
