"""One settings class for the server: defaults here, overridden by ``LGM_*`` environment variables, then by
``lgm serve`` flags (see ``service/serve_cli.py``, which mirrors every field as a flag).

List settings (``api_keys``, ``cors_origins``) read as comma-separated strings from the environment, e.g.
``LGM_API_KEYS=key1,key2``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class ServeSettings(BaseSettings):
    """Everything ``lgm serve`` can be told; each field is also the env var ``LGM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LGM_", extra="ignore", protected_namespaces=())

    # -- model -----------------------------------------------------------------------------------------------
    artifact: Path | None = Field(None, description="calibrated artifact folder (model.json, detector.json)")
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    model_name: str = Field("lgm", description="model name in responses and in the /v2/models/{name} routes")
    # -- network ---------------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    log_level: str = Field("info", description="uvicorn log level")
    graceful_timeout: float = Field(30.0, gt=0, description="seconds in-flight requests get after SIGTERM")
    # -- batching and threads --------------------------------------------------------------------------------
    batching: bool = Field(True, description="coalesce concurrent requests into one forward pass")
    max_batch_size: int = Field(64, ge=1, le=4096, description="most images in one coalesced forward")
    max_wait_ms: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="longest a request waits for others to join (only under concurrent traffic)",
    )
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0: auto = cores - 1, at most 8)")
    # -- input caps ------------------------------------------------------------------------------------------
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest decoded image, width x height")
    max_images: int = Field(64, ge=1, description="most images in one request")
    # -- access ----------------------------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="accepted X-API-Key values (none: no key needed; prefer the env var, flags show in ps)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (none by default)"
    )
    perturb: bool = Field(True, description="offer POST /v1/perturb (FGSM demo of the web page)")

    _split = field_validator("api_keys", "cors_origins", mode="before")(_split_csv)

    def torch_threads(self) -> int:
        """The thread count torch gets: the setting, or one core left for the event loop and HTTP parsing."""
        if self.threads > 0:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(8, cores - 1))
