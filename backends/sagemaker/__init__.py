"""Amazon SageMaker backend: the built-in Factorization Machines and k-NN algorithms.

:class:`SageMakerBackend` implements :class:`backends.base.Backend` on the SageMaker Python SDK
2.x (``pip install 'recsys[sagemaker]'``), imported only when a backend is built. The modules:
:mod:`.aws` (session, clients, waiters, transfers), :mod:`.plan` (the requests, checked against
botocore's model), :mod:`.fm`, :mod:`.knn`, :mod:`.endpoint`; the format readers
:mod:`.artifacts` and :mod:`.mxnet_ndarray` need numpy only.
"""

from __future__ import annotations

from .artifacts import fm_model_tar_bytes, parse_knn_jsonlines, read_fm_artifact, write_fm_model_tar
from .backend import SageMakerBackend
from .config import SAGEMAKER_OPTIONS, SageMakerConfig
from .endpoint import FMEndpoint, predictions_to_arrays
from .knn import SageMakerKNNIndex
from .plan import PlanEntry, format_plan, plan_requests

__all__ = ["read_fm_artifact", "write_fm_model_tar", "fm_model_tar_bytes", "parse_knn_jsonlines", "SageMakerBackend",
           "SageMakerConfig", "SAGEMAKER_OPTIONS", "SageMakerKNNIndex", "FMEndpoint", "predictions_to_arrays",
           "PlanEntry", "format_plan", "plan_requests"]  # fmt: skip
