"""One settings class for the server: defaults here, overridden by ``LGM_*`` environment variables, then by
``lgm serve`` flags. The flags come from these fields through the command-line bridge every ``lgm`` command
uses (``training/configargs.py``): its help from the field's description, its group (and, where it differs
from ``--field-name``, its flag) from the field's ``json_schema_extra``. Declare a new setting as a plain field
with ``Field(default, group=..., description=...)`` and it is a flag and an env var.

List settings (``api_keys``, ``cors_origins``) are comma lists in the environment (``LGM_API_KEYS=key1,key2``)
and on the command line, where the flag may also be repeated (``--api-key key1 --api-key key2``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field as _Field
from pydantic import ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.networks import networks
from training.configargs import comma_list


def Field(*default: Any, group: str, flag: str | None = None, **kw: Any) -> Any:  # noqa: N802
    """A settings field in an ``lgm serve --help`` group (and, optionally, with its own flag name)."""
    extra = {"group": group} | ({"flag": flag} if flag else {})
    return _Field(*default, json_schema_extra=extra, **kw)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (a container's or pod's CPU limit), or None if unlimited
    or unknown: cgroup v2's ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), else v1's ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``. The affinity mask does not show such a limit: a pod limited to 2 CPUs on a 64-core
    node still sees 64 cores there."""
    try:
        text = (root / "cpu.max").read_text().split()
        quota, period = (text[0], text[1]) if len(text) >= 2 else ("max", "1")
    except OSError:
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max": no quota
        return None
    return q / p if q > 0 and p > 0 else None


def _cores() -> int:
    """Cores this process may use: its affinity mask, capped by its cgroup's CPU quota (rounded up)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return max(1, min(n, math.ceil(limit))) if limit is not None else n


def _split_csv(value: Any) -> Any:
    return comma_list(value) if isinstance(value, str) else value


class ServeSettings(BaseSettings):
    """Everything ``lgm serve`` can be told; each field is also the env var ``LGM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LGM_", extra="ignore", protected_namespaces=())

    artifact: Path | None = Field(
        None, group="model", description="calibrated artifact folder (model.json, detector.json)"
    )
    device: str = Field("auto", group="model", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    model_name: str = Field(
        "lgm", group="model", description="model name in responses and in the /v2/models/{name} routes"
    )
    engine: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        group="model",
        description="what scores every answer: torch (eager PyTorch) | onnxruntime (the detector exported in "
        "memory at start-up by lgm export's exporter, run by ONNX Runtime on the CPU; needs lgm-detect[onnx]; "
        "FGSM stays in PyTorch) | auto: onnxruntime on the CPU when the onnx extra is installed, which served "
        "1.3-2.6x torch's requests per second on every route measured (docs/service.md, Engines), else torch "
        "(on a GPU, without the extra, or when the export fails: one warning says why)",
    )
    host: str = Field("127.0.0.1", group="network", description="interface to bind (0.0.0.0 for all)")
    port: int = Field(8000, group="network", ge=0, le=65535, description="TCP port")
    log_level: str = Field("info", group="network", description="uvicorn log level")
    graceful_timeout: float = Field(
        30.0, group="network", gt=0, description="seconds in-flight requests get after SIGTERM"
    )
    workers: int = Field(
        0,
        group="processes and threads",
        ge=0,
        le=64,
        description="uvicorn worker processes, each with its own model and batcher (0: auto = one per core, at most 8)",
    )
    threads: int = Field(
        0,
        group="processes and threads",
        ge=0,
        le=256,
        description="torch (or ONNX Runtime intra-op) CPU threads per worker (0: auto = the cores left over by "
        "the workers, at least 1)",
    )
    batching: bool = Field(
        True, group="batching", description="coalesce concurrent requests into one forward pass"
    )
    max_batch_size: int = Field(
        64, group="batching", ge=1, le=4096, description="most images in one coalesced forward"
    )
    max_wait_ms: float = Field(
        1.0,
        group="batching",
        ge=0,
        le=1000,
        description="longest a request waits for others to join (only under concurrent traffic)",
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, group="input caps", ge=1024, description="largest request body (413 above)"
    )
    max_image_pixels: int = Field(
        4096 * 4096, group="input caps", ge=1, description="largest decoded image, width x height"
    )
    max_images: int = Field(64, group="input caps", ge=1, description="most images in one request")
    api_keys: Annotated[list[str], NoDecode] = Field(
        group="access",
        flag="--api-key",
        default_factory=list,
        description="accepted X-API-Key values (none: no key needed; prefer the env var, flags show in ps)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        group="access",
        flag="--cors-origin",
        default_factory=list,
        description="origins allowed by CORS (none by default)",
    )
    perturb: bool = Field(
        True, group="access", description="offer POST /v1/perturb (FGSM demo of the web page)"
    )

    # -- gRPC (Open Inference Protocol v2, service/grpc_server.py) ----------------------------------------------
    grpc_port: int = Field(
        8001,
        group="network",
        ge=0,
        le=65535,
        description="gRPC port (OIP v2 + grpc.health.v1), on --host, shared by the workers; 0: no gRPC",
    )

    # -- stateful defence against query attacks (service/stateful/, docs/query-attacks.md) ----------------------
    query_policy: Literal["off", "flag", "block"] = Field(
        "flag",
        group="query-attack defence",
        description="what a client whose queries are near-duplicates gets: flag (answers carry "
        "client_flagged: true, /metrics counts it) | block (429 for query_flag_s seconds) | off",
    )
    query_store: str = Field(
        "",
        group="query-attack defence",
        description="query-history store: sqlite:///PATH (shared by the workers of one machine) or "
        "redis://HOST:6379/0 (shared by replicas); empty: SQLite in the temp folder, one file per port",
    )
    query_match_hashes: int = Field(
        15,
        group="query-attack defence",
        ge=1,
        le=1000,
        description="fingerprint hashes two images must share to be near-duplicates (Blacklight's threshold)",
    )
    query_flag_after: int = Field(
        3, group="query-attack defence", ge=1, description="near-duplicate queries that flag a client"
    )
    query_history: int = Field(
        1000, group="query-attack defence", ge=1, description="queries remembered per client (count bound)"
    )
    query_ttl_s: float = Field(
        3600.0, group="query-attack defence", gt=0, description="seconds a query is remembered (time bound)"
    )
    query_flag_s: float = Field(
        600.0,
        group="query-attack defence",
        gt=0,
        description="seconds a flag (and a block) lasts after the client's latest near-duplicate",
    )
    query_fingerprint_hashes: int = Field(
        50, group="query-attack defence", ge=1, le=1000, description="hashes kept per image (top-k)"
    )
    query_patch: int = Field(
        4, group="query-attack defence", ge=1, le=64, description="side of the hashed square patches (pixels)"
    )
    query_levels: int = Field(
        5,
        group="query-attack defence",
        ge=1,
        le=255,
        description="quantisation levels per pixel (round(L x))",
    )
    query_hash_key: int = Field(
        0x5EED,
        group="query-attack defence",
        ge=0,
        description="key mixed into the fingerprint hashes (the same on every replica; change it to keep "
        "fingerprints unpredictable)",
    )
    query_reveal: Literal["full", "rounded", "label"] = Field(
        "full",
        group="query-attack defence",
        description="what every answer reveals: full | rounded (probabilities and scores to "
        "query_round_digits decimals) | label (class and is_adversarial only)",
    )
    query_round_digits: int = Field(
        2, group="query-attack defence", ge=0, le=6, description="decimals kept by query_reveal=rounded"
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        group="query-attack defence",
        flag="--trusted-proxy",
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="addresses or networks whose X-Forwarded-For names the client (without API keys)",
    )
    # -- end of the stateful defence's settings ----------------------------------------------------------------------

    _split = field_validator("api_keys", "cors_origins", "trusted_proxies", mode="before")(_split_csv)

    @field_validator("query_store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if (
            value
            and "://" in value
            and not value.startswith(("sqlite:///", "redis://", "rediss://", "unix://"))
        ):
            raise ValueError("use sqlite:///PATH, redis://HOST:PORT/DB, rediss:// or unix://")
        return value

    @field_validator("engine")
    @classmethod
    def _engine_on_cpu(cls, value: str, info: ValidationInfo) -> str:
        device = info.data.get("device", "auto")
        if value == "onnxruntime" and device not in ("auto", "cpu"):
            raise ValueError(
                f"onnxruntime runs on the CPU here; drop --device {device} or use --engine torch"
            )
        return value

    def resolved_engine(self) -> str:
        """The engine ``engine`` names; ``auto``: onnxruntime when the detector runs on the CPU (``--device cpu``,
        or ``auto`` with no CUDA device) and onnx and onnxruntime are installed, else torch."""
        if self.engine != "auto":
            return self.engine
        if self.device not in ("auto", "cpu"):
            return "torch"
        import importlib.util

        if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
            return "torch"
        if self.device == "auto":
            import torch

            if torch.cuda.is_available():
                return "torch"
        return "onnxruntime"

    def detector_device(self) -> str:
        """Where the torch detector loads: ``device``, except that ``auto`` is the CPU under the onnxruntime
        engine (the export is made from a CPU detector, and FGSM then runs there too)."""
        return "cpu" if self.resolved_engine() == "onnxruntime" and self.device == "auto" else self.device

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: list[str]) -> list[str]:
        networks(value)  # a ValueError naming the bad entry
        return value

    def server_workers(self) -> int:
        """Worker processes: the setting, or one per core (at most 8). Each process has one event loop, and the
        event loop (HTTP, JSON, image decoding) is what limits a worker on the CPU; docs/results/serving.md."""
        return self.workers if self.workers > 0 else max(1, min(8, _cores()))

    def torch_threads(self) -> int:
        """Torch threads per worker: the setting, or the cores the workers leave over (at least 1)."""
        if self.threads > 0:
            return self.threads
        return max(1, _cores() // self.server_workers())
