"""The v1 API: POST /v1/predict, GET /v1/model, POST /v1/perturb (the web page's FGSM button).

The bodies are the per-model pydantic models of ``service/schemas.py`` (``APIModels``); FastAPI validates them
and derives the OpenAPI document from them. Every /v1 route needs X-API-Key when keys are configured.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name per-app models.
import asyncio
import base64
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, Form, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from service import schemas
from service.engine import info
from service.errors import APIError
from service.images import decode_image, encode_png
from service.payloads import instance_array, instances_size, prediction_dicts, stack
from service.state import (
    INLINE_DECODE_BYTES,
    ServiceState,
    add_route,
    get_state_of,
    json_or_form,
    ready_engine,
)
from service.stateful.setup import request_client, reveal_predictions, screened

TAGS = ["v1"]
TopK = Annotated[int, Query(ge=1, le=1000, description="classes listed in top_k")]


async def _off_loop_if_large(fn: Any, size: int) -> Any:
    return await run_in_threadpool(fn) if size > INLINE_DECODE_BYTES else fn()


async def _predict(request: Request, st: ServiceState, x: torch.Tensor, top_k: int) -> JSONResponse:
    _, engine, batcher = ready_engine(request)
    verdict, res = await screened(  # 429 when refused (query_policy=block)
        st.guard, lambda: request_client(request, st.settings, st.guard.trusted_proxies), x, batcher.submit(x)
    )
    st.metrics.count_scored(res.is_adversarial)
    s = st.settings
    preds = prediction_dicts(res, engine.class_names, top_k)
    return JSONResponse(
        {
            "model": s.model_name,
            "model_version": st.model_version,
            "predictions": reveal_predictions(preds, s.query_reveal, s.query_round_digits),
            "client_flagged": verdict.flagged,
        }
    )


def _png_b64(x: torch.Tensor) -> str:
    """(C, H, W) in [0, 1] -> base64 PNG."""
    return base64.b64encode(encode_png(x.clamp(0, 1).mul(255).round().to(torch.uint8).numpy())).decode()


def register(app: FastAPI) -> None:
    st = get_state_of(app)
    m = st.models
    s = st.settings
    shape = m.shape

    PredictRequest = m.predict  # noqa: N806 - pydantic models, named as classes
    PredictForm = m.predict_form  # noqa: N806
    PerturbRequest = m.perturb  # noqa: N806

    async def predict(request: Request, body: PredictRequest, top_k: TopK = 3) -> JSONResponse:  # type: ignore[valid-type]
        """One or more images, as JSON ``{"instances": [{"b64": ...} | {"array": ...}]}`` or as multipart
        uploads in the repeatable field ``files``. Encoded images are converted to the model's input shape
        (transparency onto black, luma or RGB, bilinear resize, /255); arrays must already have that shape.

        ```
        curl -F files=@digit.png http://localhost:8000/v1/predict
        ```
        """
        ready_engine(request)
        instances = body.instances  # type: ignore[attr-defined]

        def convert() -> list[np.ndarray]:
            return [instance_array(it, i, shape, s.max_image_pixels) for i, it in enumerate(instances)]

        x = stack(await _off_loop_if_large(convert, instances_size(instances)))  # (N, C, H, W)
        return await _predict(request, st, x, top_k)

    predict.body_hint = '{"instances": [{"b64": ...} or {"array": ...}]}'  # type: ignore[attr-defined]

    async def predict_form(
        request: Request,
        form: Annotated[PredictForm, Form()],  # type: ignore[valid-type]
        top_k: TopK = 3,
    ) -> JSONResponse:
        ready_engine(request)
        blobs = [await f.read() for f in form.files]  # type: ignore[attr-defined]

        def decode_all() -> list[np.ndarray]:
            return [decode_image(b, shape, s.max_image_pixels, f"files[{i}]") for i, b in enumerate(blobs)]

        x = stack(await _off_loop_if_large(decode_all, sum(len(b) for b in blobs)))
        return await _predict(request, st, x, top_k)

    form_schema = PredictForm.model_json_schema()
    form_schema["properties"]["files"]["items"]["format"] = "binary"  # OpenAPI 3.0's spelling of a file part
    add_route(
        app,
        "post",
        "/v1/predict",
        predict,
        tags=TAGS,
        response_model=None,
        responses={
            200: {"model": schemas.PredictResponse},
            **schemas.errors(400, 401, 413, 415, 422, 429, 503),
        },
        summary="Classify images and score how abnormal each is",
        route_class_override=json_or_form(
            predict_form,
            {"max_files": 10 * s.max_images + 10, "max_fields": 1000, "max_part_size": s.max_request_bytes},
        ),
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": form_schema,
                        # each part a file: Content-Disposition names a filename (a part without one is a text field)
                        "encoding": {
                            "files": {
                                "contentType": "image/*",
                                "headers": {
                                    "Content-Disposition": {
                                        "schema": {"type": "string"},
                                        "example": 'form-data; name="files"; filename="digit.png"',
                                    }
                                },
                            }
                        },
                    }
                }
            }
        },
    )

    async def model_info(request: Request) -> dict[str, Any]:
        """Classes, input shape, L-GM settings, detector thresholds and calibration figures."""
        _, engine, _ = ready_engine(request)
        return info(engine, s.model_name)

    add_route(
        app,
        "get",
        "/v1/model",
        model_info,
        tags=TAGS,
        response_model=schemas.ModelInfo,
        responses=schemas.errors(401, 503),
        summary="Model and detector",
    )

    async def perturb(request: Request, body: PerturbRequest) -> JSONResponse:  # type: ignore[valid-type]
        """Fast Gradient Sign Method (Goodfellow et al. 2015) against the model's own prediction, for the web
        page's side-by-side view."""
        _, engine, batcher = ready_engine(request)
        if not s.perturb:
            raise APIError(404, "perturbation endpoint disabled (perturb = false)")
        eps = float(body.epsilon)  # type: ignore[attr-defined]
        arr = await run_in_threadpool(instance_array, body.instance, 0, shape, s.max_image_pixels)  # type: ignore[attr-defined]
        x = stack([arr])
        loop = asyncio.get_running_loop()
        x_adv = await loop.run_in_executor(engine.executor, engine.fgsm, x, eps)  # (1, C, H, W)
        res = await batcher.submit(torch.cat([x, x_adv]))
        orig, adv = prediction_dicts(res, engine.class_names, 3)
        return JSONResponse(
            {
                "model": s.model_name,
                "model_version": st.model_version,
                "attack": "FGSM",
                "epsilon": eps,
                "original": orig,
                "perturbed": adv,
                "perturbed_png_b64": _png_b64(x_adv[0]),
                "original_png_b64": _png_b64(x[0]),
            }
        )

    perturb.body_hint = '{"instance": {"b64": ...} or {"array": ...}, "epsilon": 0.2}'  # type: ignore[attr-defined]
    add_route(
        app,
        "post",
        "/v1/perturb",
        perturb,
        tags=TAGS,
        response_model=None,
        responses={200: {"model": schemas.PerturbResponse}, **schemas.errors(401, 404, 413, 415, 422, 503)},
        summary="FGSM-perturb one image and score both",
    )
