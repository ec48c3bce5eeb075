"""The v1 API: POST /v1/predict, GET /v1/model, POST /v1/perturb (the web page's FGSM button)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import torch
from fastapi import Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from service import schemas
from service.engine import info
from service.errors import APIError
from service.images import decode_image, encode_png
from service.payloads import (
    check_count,
    decode_instance,
    instances_from_json,
    load_json,
    prediction_dicts,
    stack,
)
from service.state import RouteTable, ServiceState, parse_off_loop_if_large, ready_engine

# Every /v1 route needs X-API-Key when keys are configured.
ROUTES = RouteTable(tags=["v1"])
register = ROUTES.register


async def _images_from_request(
    request: Request, st: ServiceState, shape: tuple[int, int, int]
) -> torch.Tensor:
    """multipart ``files`` or JSON ``instances`` -> (N, C, H, W) float32."""
    s = st.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(
                max_files=10 * s.max_images + 10, max_fields=1000, max_part_size=s.max_request_bytes
            )
        except AssertionError:  # starlette asserts python-multipart is installed
            raise APIError(500, "multipart support missing") from None
        try:
            uploads = form.getlist("files")
            bad = [k for k, v in form.multi_items() if k != "files" or not isinstance(v, UploadFile)]
            if bad:
                raise APIError(
                    422, f"unexpected form field {bad[0]!r}; send images in the repeatable field 'files'"
                )
            check_count(len(uploads), s.max_images)
            blobs = [await u.read() for u in uploads]  # type: ignore[union-attr]
        finally:
            await form.close()

        def decode_all() -> list[np.ndarray]:
            return [decode_image(b, shape, s.max_image_pixels, f"files[{i}]") for i, b in enumerate(blobs)]

        return stack(await parse_off_loop_if_large(decode_all, sum(len(b) for b in blobs)))
    if ctype in ("application/json", "") or ctype.endswith("+json"):
        body = await request.body()
        instances = instances_from_json(load_json(body), s.max_images)

        def parse_all() -> list[np.ndarray]:
            return [decode_instance(it, i, shape, s.max_image_pixels) for i, it in enumerate(instances)]

        return stack(await parse_off_loop_if_large(parse_all, len(body)))
    raise APIError(415, f"unsupported content type {ctype!r}; send multipart/form-data or application/json")


@ROUTES.route(
    "post",
    "/v1/predict",
    response_model=None,
    responses={200: {"model": schemas.PredictResponse}, **schemas.ERRORS},
    openapi_extra=schemas.PREDICT_BODY,
    summary="Classify images and score how abnormal each is",
)
async def predict(
    request: Request, top_k: int = Query(3, ge=1, le=1000, description="classes listed in top_k")
) -> JSONResponse:
    """One or more images, as multipart uploads in the repeatable field ``files`` or as JSON
    ``{"instances": [{"b64": ...} | {"array": ...}]}``. Encoded images are converted to the model's input shape
    (transparency onto black, luma or RGB, bilinear resize, /255); arrays must already have that shape.

    ```
    curl -F files=@digit.png http://localhost:8000/v1/predict
    ```
    """
    st, engine, batcher = ready_engine(request)
    x = await _images_from_request(request, st, engine.input_shape)  # (N, C, H, W)
    res = await batcher.submit(x)
    st.metrics.count_scored(res.is_adversarial)
    return JSONResponse(
        {
            "model": st.settings.model_name,
            "model_version": st.model_version,
            "predictions": prediction_dicts(res, engine.class_names, top_k),
        }
    )


@ROUTES.route(
    "get",
    "/v1/model",
    responses={200: {"description": "model card"}, **schemas.ERRORS},
    summary="Model and detector",
)
async def model_info(request: Request) -> dict[str, Any]:
    """Classes, input shape, L-GM settings, detector thresholds and calibration figures."""
    st, engine, _ = ready_engine(request)
    return info(engine, st.settings.model_name)


def _png_b64(x: torch.Tensor) -> str:
    """(C, H, W) in [0, 1] -> base64 PNG."""
    return base64.b64encode(encode_png(x.clamp(0, 1).mul(255).round().to(torch.uint8).numpy())).decode()


@ROUTES.route(
    "post",
    "/v1/perturb",
    response_model=None,
    responses={200: {"model": schemas.PerturbResponse}, **schemas.ERRORS},
    openapi_extra=schemas.PERTURB_BODY,
    summary="FGSM-perturb one image and score both",
)
async def perturb(request: Request) -> JSONResponse:
    """Fast Gradient Sign Method (Goodfellow et al. 2015) against the model's own prediction, for the web page's
    side-by-side view. Body: ``{"instance": {"b64": ...} | {"array": ...}, "epsilon": 0.2}``."""
    st, engine, batcher = ready_engine(request)
    if not st.settings.perturb:
        raise APIError(404, "perturbation endpoint disabled (perturb = false)")
    obj = load_json(await request.body())
    if not isinstance(obj, dict) or not isinstance(obj.get("instance"), dict):
        raise APIError(422, 'JSON body must be {"instance": {"b64": ...} or {"array": ...}, "epsilon": 0.2}')
    eps = obj.get("epsilon", 0.2)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= float(eps) <= 1.0:
        raise APIError(422, "epsilon must be a number in [0, 1]")
    it = obj["instance"]
    if ("b64" in it) == ("array" in it):
        raise APIError(422, 'instance must hold exactly one of "b64" or "array"')
    x = stack(
        [await run_in_threadpool(decode_instance, it, 0, engine.input_shape, st.settings.max_image_pixels)]
    )
    loop = asyncio.get_running_loop()
    x_adv = await loop.run_in_executor(engine.executor, engine.fgsm, x, float(eps))  # (1, C, H, W)
    res = await batcher.submit(torch.cat([x, x_adv]))
    orig, adv = prediction_dicts(res, engine.class_names, 3)
    return JSONResponse(
        {
            "model": st.settings.model_name,
            "model_version": st.model_version,
            "attack": "FGSM",
            "epsilon": float(eps),
            "original": orig,
            "perturbed": adv,
            "perturbed_png_b64": _png_b64(x_adv[0]),
            "original_png_b64": _png_b64(x[0]),
        }
    )
