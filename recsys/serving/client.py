"""Clients with the SageMaker SDK predictor's ``predict`` shape: :class:`RecsysPredictor` for
the recsys service (``recsys serve``, its other endpoints as methods) and
:class:`SageMakerPredictor` for a real SageMaker endpoint (through a ``sagemaker-runtime``
client). Both raise :class:`PredictorError` when the service refuses a request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import scipy.sparse as sp

from recsys.errors import BackendError, DataError, require

from . import protocol
from .protocol import JSON, JSONLINES

__all__ = ["PredictorError", "RecsysPredictor", "SageMakerPredictor"]

#: What :class:`SageMakerPredictor` sends at most per request (SageMaker refuses over 6 MB).
SAGEMAKER_PAYLOAD_BYTES = 5 * 1024 * 1024


class PredictorError(BackendError):
    """A prediction service refused or failed a request: its HTTP ``status_code``, its ``error``
    code (``"shape_mismatch"``, ``"ValidationError"``, ...) and ``detail`` (None when unknown)."""

    def __init__(self, message: str, *, status_code: int | None = None, error: str | None = None, detail: Any = None):
        super().__init__(message)
        self.status_code, self.error, self.detail = status_code, error, detail


class _FMPredictor:
    """The shared ``predict``: encode, send each body with :meth:`_invoke`, decode."""

    def __init__(self, *, content_type: str, accept: str, format: str, max_payload_bytes: int, where: str):
        self.format = protocol.check_format(format)
        self.content_type = protocol.response_media_type(content_type, strict=True)
        self.accept = protocol.response_media_type(accept, strict=True)
        self.max_payload_bytes = int(max_payload_bytes)
        self._where = where

    def _invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str | None]:
        """Send one body; return the response body and its ``Content-Type``."""
        raise NotImplementedError

    def _bodies(self, data: Any, content_type: str) -> Iterator[tuple[int | None, bytes]]:
        """``(number of rows or None when unknown, body)`` of each request ``data`` needs."""
        if isinstance(data, (bytes, bytearray, str)):
            yield None, data.encode("utf-8") if isinstance(data, str) else bytes(data)
            return
        if isinstance(data, dict):
            if not isinstance(data.get("instances"), list):
                raise DataError(f'a JSON payload must be {{"instances": [...]}}, got keys {sorted(data)}')
            data = data["instances"]
        elif not (isinstance(data, list) and data and all(isinstance(x, dict) for x in data)):
            X = data if sp.issparse(data) else np.asarray(data)
            for start, stop, body in protocol.batch_payloads(
                X, max_bytes=self.max_payload_bytes, format=self.format, content_type=content_type
            ):
                yield stop - start, body
            return
        if content_type == JSONLINES:
            yield len(data), "".join(json.dumps(inst) + "\n" for inst in data).encode("utf-8")
        else:
            yield len(data), json.dumps({"instances": data}).encode("utf-8")

    def predict(self, data: Any, initial_args: dict[str, str] | None = None) -> dict[str, Any]:
        """``{"predictions": [{"score": s, "predicted_label": l}, ...]}`` (labels only for a
        classifier; also for JSON-lines answers), one per row of ``data``: an array or sparse
        matrix (dense or sparse rows, in bodies under ``max_payload_bytes``), a JSON payload
        (``{"instances": [...]}`` or its list) or an encoded body (bytes/str). ``initial_args``
        may set ``ContentType`` and ``Accept``. A DataError when ``data`` cannot be encoded."""
        args = initial_args or {}
        content_type = protocol.response_media_type(args.get("ContentType", self.content_type), strict=True)
        accept = protocol.response_media_type(args.get("Accept", self.accept), strict=True)
        predictions: list[dict[str, Any]] = []
        for n, body in self._bodies(data, content_type):
            raw, response_type = self._invoke(body, content_type, accept)
            predictions += protocol.parse_predictions(raw, n, where=self._where, content_type=response_type or accept)
        return {"predictions": predictions}

    def predict_arrays(self, data: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict` as ``(scores, predicted_labels)`` float64 arrays."""
        return protocol.predictions_to_arrays(self.predict(data, **kwargs)["predictions"])


class RecsysPredictor(_FMPredictor):
    """A client of the recsys service at ``endpoint_url`` (e.g. ``"http://127.0.0.1:8080"``),
    ``timeout`` seconds per request. :meth:`predict` sends ``content_type``, asks for ``accept``
    (JSON or JSON lines) and encodes matrices in ``format`` (``"auto"``: sparse rows for a
    sparse matrix). ``client``: an ``httpx.Client`` to use (its ``base_url`` is ignored).

    >>> with RecsysPredictor("http://127.0.0.1:8080") as p:  # doctest: +SKIP
    ...     p.predict(X)["predictions"][0]["score"]
    ...     p.recommendations(272888, k=5)["recommendations"]
    """

    def __init__(
        self,
        endpoint_url: str,
        *,
        timeout: float = 30.0,
        content_type: str = JSON,
        accept: str = JSON,
        format: str = "auto",
        max_payload_bytes: int = protocol.DEFAULT_MAX_BODY_BYTES,
        client: Any = None,
    ):
        super().__init__(content_type=content_type, accept=accept, format=format,
                         max_payload_bytes=max_payload_bytes, where=f"recsys service {endpoint_url}")  # fmt: skip
        httpx = require("httpx", "serve")
        self.endpoint_url = endpoint_url.rstrip("/")
        self._owns_client = client is None
        self._http = client if client is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        url = self.endpoint_url + path
        try:
            response = self._http.request(method, url, timeout=self._timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise PredictorError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            error = payload.get("error") if isinstance(payload, dict) else None
            detail = payload.get("detail") if isinstance(payload, dict) else response.text[:500]
            raise PredictorError(
                f"{method} {url} answered {response.status_code}: {error or 'error'}: {detail}",
                status_code=response.status_code, error=error, detail=detail,
            )  # fmt: skip
        return response

    def _invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str | None]:
        response = self._request("POST", "/invocations", content=body,
                                 headers={"Content-Type": content_type, "Accept": accept})  # fmt: skip
        return response.content, response.headers.get("content-type")

    def recommendations(self, customer_id: Any, k: int = 10, *, exclude_seen: bool = True) -> dict[str, Any]:
        """``GET /recommendations/{customer_id}`` (see :mod:`recsys.serving.app`)."""
        params = {"k": k, "exclude_seen": "true" if exclude_seen else "false"}
        return self._request("GET", f"/recommendations/{quote(str(customer_id), safe='')}", params=params).json()

    def recommendations_for_recent(self, recent: list[Any], k: int = 10, *, exclude_seen: bool = True) -> dict[str, Any]:
        """``POST /recommendations``: an anonymous session's top ``k`` from ``recent``."""
        body = {"recent": list(recent), "k": k, "exclude_seen": exclude_seen}
        return self._request("POST", "/recommendations", json=body).json()

    def similar(self, product_id: Any, k: int = 10) -> dict[str, Any]:
        """``GET /similar/{product_id}``: ``{"product_id", "product_title", "k", "similar": [...]}``."""
        return self._request("GET", f"/similar/{quote(str(product_id), safe='')}", params={"k": k}).json()

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the served model's identity."""
        return self._request("GET", "/healthz").json()

    def ping(self) -> bool:
        """True when ``GET /ping`` answers 200."""
        try:
            self._request("GET", "/ping")
        except PredictorError:
            return False
        return True

    def reload(self, model_dir: str | None = None, model: str | None = None) -> dict[str, Any]:
        """``POST /reload``: load ``model_dir`` (below the server's reload root; default: the
        served run again) and swap."""
        payload = {k: v for k, v in (("model_dir", model_dir), ("model", model)) if v is not None}
        return self._request("POST", "/reload", json=payload).json()

    def close(self) -> None:
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> RecsysPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RecsysPredictor({self.endpoint_url!r})"


class SageMakerPredictor(_FMPredictor):
    """A real SageMaker FM endpoint behind the same ``predict``: give a ``predictor`` (a
    ``sagemaker.predictor.Predictor``, whose endpoint and runtime client are used, not its
    serializer), or ``endpoint_name`` with a boto3 ``sagemaker-runtime`` ``runtime_client``
    (default: a new one in ``region_name``). Other options as for :class:`RecsysPredictor`
    (default limit 5 MB, under SageMaker's 6 MB); SageMaker's FM reads ``application/json``.
    """

    def __init__(
        self,
        endpoint_name: str | None = None,
        *,
        predictor: Any = None,
        runtime_client: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        format: str = "auto",
        max_payload_bytes: int = SAGEMAKER_PAYLOAD_BYTES,
        region_name: str | None = None,
    ):
        self.component_name = None
        if predictor is not None:
            endpoint_name = endpoint_name or predictor.endpoint_name
            runtime_client = runtime_client or predictor.sagemaker_session.sagemaker_runtime_client
            self.component_name = getattr(predictor, "component_name", None)
        if not endpoint_name:
            raise DataError("SageMakerPredictor needs an endpoint_name or a sagemaker Predictor")
        if runtime_client is None:
            boto3 = require("boto3", "sagemaker")
            runtime_client = boto3.client("sagemaker-runtime", region_name=region_name)
        super().__init__(content_type=content_type, accept=accept, format=format,
                         max_payload_bytes=max_payload_bytes, where=f"SageMaker endpoint {endpoint_name}")  # fmt: skip
        self.endpoint_name = endpoint_name
        self._runtime = runtime_client

    def _invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str | None]:
        request = {"EndpointName": self.endpoint_name, "Body": body, "ContentType": content_type, "Accept": accept}
        if self.component_name:
            request["InferenceComponentName"] = self.component_name
        try:
            response = self._runtime.invoke_endpoint(**request)
            raw = response["Body"].read()
        except Exception as exc:
            if not type(exc).__module__.startswith("botocore"):
                raise
            info = getattr(exc, "response", None) or {}
            raise PredictorError(
                f"invoking SageMaker endpoint {self.endpoint_name} failed: {exc}",
                status_code=info.get("ResponseMetadata", {}).get("HTTPStatusCode"),
                error=info.get("Error", {}).get("Code"), detail=str(exc),
            ) from exc  # fmt: skip
        return raw, response.get("ContentType")

    def __repr__(self) -> str:
        return f"SageMakerPredictor({self.endpoint_name!r})"
