"""SageMaker's k-NN through the Recommender, on moto: no request ever asks for more than 1024
neighbours, a customer who rated more videos than that still gets a full and correct top-100
(completed from the local vectors), and the recommendations do not depend on which way
SageMaker's ``distances`` run."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sagemaker")
pytest.importorskip("moto")
pytest.register_assert_rewrite("tests.sagemaker_fakes")

from recsys.model import FittedFM  # noqa: E402
from recsys.params import KNNParams  # noqa: E402
from recsys.recommend import Recommender  # noqa: E402
from tests.test_backend_contract import brute_force_recommendations, mappings  # noqa: E402

pytest_plugins = ["tests.sagemaker_fakes"]


def planted(n_users: int, n_items: int, seed: int = 0, d: int = 4) -> FittedFM:
    rng = np.random.default_rng(seed)
    return FittedFM(0.2, rng.normal(size=n_users + n_items), rng.normal(size=(n_users + n_items, d)),
                    "binary_classifier", metadata={"n_users": n_users, "n_items": n_items})  # fmt: skip


def seen_matrix(sets: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, s in enumerate(sets) for _ in s]
    cols = [i for s in sets for i in sorted(s)]
    return sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(len(sets), n_items))


def test_a_heavy_rater_gets_a_full_correct_top_100(sagemaker_backend, sagemaker_fake, sagemaker_session):
    n_users, n_items, K = 3, 1300, 100
    fm = planted(n_users, n_items)
    best_for_0 = np.argsort(-fm.decision_pairs(np.zeros(n_items, int), np.arange(n_items)), kind="stable")
    sets = [set(best_for_0[:1150].tolist()), {1, 2, 3}, set()]  # customer 0 rated 1150 videos: their best ones
    rec = Recommender(fm, mappings(n_users, n_items), seen_matrix(sets, n_items), backend=sagemaker_backend,
                      knn_params=KNNParams(k=K))  # fmt: skip
    ids, scores = rec.recommend(np.arange(n_users), K)

    for u in range(n_users):
        want_ids, want_scores = brute_force_recommendations(fm, u, sets[u], n_items, K)
        assert ids[u].tolist() == want_ids  # full: 100 videos, none rated, in the brute-force order
        np.testing.assert_allclose(scores[u], want_scores, rtol=1e-5, atol=1e-5)
    # SageMaker's top 1024 for customer 0 were all rated: that list came from the local vectors.
    sm = sagemaker_session.sagemaker_client
    jobs = [sm.describe_training_job(TrainingJobName=j["TrainingJobName"])
            for j in sm.list_training_jobs()["TrainingJobSummaries"]]  # fmt: skip
    assert [j["HyperParameters"]["k"] for j in jobs] == ["1024"]
    sent_k = [int(p["HyperParameters"]["k"]) for api, p in sagemaker_fake.sent if api == "sagemaker.create_training_job"]
    assert sent_k == [1024]
    (report,) = sagemaker_backend.report()["knn"]
    assert (report["k_requested"], report["k_sent"], report["ntotal"]) == (min(n_items, K + 1150 + 1), 1024, n_items)
    assert report["completed_rows"] >= 1 and len(report["transform_jobs"]) == 1


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["distances=scores", "distances=-scores"])
def test_either_order_of_distances_gives_identical_recommendations(make_sagemaker_backend, sagemaker_fake, sign):
    n_users, n_items, K = 10, 60, 8
    fm = planted(n_users, n_items, seed=5)
    rng = np.random.default_rng(6)
    sets = [set(rng.choice(n_items, size=rng.integers(0, 12), replace=False).tolist()) for _ in range(n_users)]
    sagemaker_fake.knn_distance_sign = sign
    results = {}
    for order in ("ascending", "descending", "shuffled"):
        sagemaker_fake.knn_order = order
        backend = make_sagemaker_backend()
        rec = Recommender(fm, mappings(n_users, n_items), seen_matrix(sets, n_items), backend=backend,
                          knn_params=KNNParams(k=K))  # fmt: skip
        results[order] = rec.recommend(np.arange(n_users), K)
        (report,) = backend.report()["knn"]
        assert report["distance_order"] == {"shuffled": "unsorted"}.get(order, order)
        assert report["distances_match_local"] == ("equal" if sign > 0 else "negated")
        assert report["max_distance_difference"] < 1e-4 or sign < 0
    for order in ("descending", "shuffled"):
        np.testing.assert_array_equal(results[order][0], results["ascending"][0])
        np.testing.assert_array_equal(results[order][1], results["ascending"][1])
    for u in range(n_users):
        assert results["ascending"][0][u].tolist() == brute_force_recommendations(fm, u, sets[u], n_items, K)[0]
