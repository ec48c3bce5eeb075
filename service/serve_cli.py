"""``lgm serve DIR``: every ``ServeSettings`` field as a flag, built by the same bridge as every other command
(``training/configargs.py``), its help and group taken from the field (flags beat ``LGM_*`` env vars, which
beat defaults; list flags take comma lists and may be repeated). With more than one worker, uvicorn starts the processes, each of which
builds the app from the same settings (handed over as ``LGM_*`` variables).

The artifact is loaded and checked before uvicorn starts, so a missing, tampered or uncalibrated artifact stops
start-up with one line (``lgm serve: error: ...``) and exit code 2. Under ``--engine onnxruntime`` the detector is
also exported (in memory, ``service/onnx_engine.py``) before uvicorn starts, so an artifact that cannot be
exported, or a missing onnx extra, is one such line naming the engine; with several workers each exports its own.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from service.settings import ServeSettings
from training.configargs import add_arguments, given, one_line_error

WORKER_HEALTHCHECK_S = 60  # seconds: see serve()'s multi-worker branch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a calibrated artifact over HTTP (FastAPI + uvicorn)",
        description="Serve a calibrated artifact. Each flag also reads from the env var LGM_<NAME> "
        "(e.g. LGM_MAX_BATCH_SIZE=32, LGM_API_KEYS=k1,k2); flags win.",
    )
    p.add_argument(
        "artifact", nargs="?", default=None, help="calibrated artifact folder (default: $LGM_ARTIFACT)"
    )
    # the same bridge as every other command (training/configargs.py); left-off flags defer to env and defaults
    add_arguments(p, ServeSettings, only_given=True, env_prefix="LGM_", exclude=("artifact",))
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Env vars and defaults, overridden by the flags actually given. A bad value raises a one-line ValueError
    naming the flag."""
    from pydantic import ValidationError

    options = given(ServeSettings, args)
    if getattr(args, "artifact", None) is not None:
        options["artifact"] = args.artifact
    try:
        return ServeSettings(**options)
    except ValidationError as exc:
        raise one_line_error(ServeSettings, exc) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from detector.scoring import Detector
    from service.app import create_app
    from service.onnx_engine import WHO, prepare

    settings = settings_from_args(args)
    if settings.artifact is None:
        raise ValueError("no artifact: run `lgm serve DIR` (or set LGM_ARTIFACT)")
    if settings.grpc_port:  # before the model loads: a taken port fails fast
        from service.grpc_server import check_port_free

        check_port_free(settings.host, settings.grpc_port)
    engine = settings.resolved_engine()
    try:  # ValueError with one line when unusable
        detector = Detector.load(settings.artifact, settings.detector_device())
    except ValueError as exc:
        if engine == "torch":
            raise
        raise ValueError(f"{WHO}: {str(exc).splitlines()[0]}") from None
    # an explicit onnxruntime engine that cannot export: one line naming it; auto falls back to torch
    chosen, onnx_model = prepare(settings.engine, engine, detector)
    # auto fell back to torch: the workers' settings say so, and none of them tries the export again
    if chosen != engine:
        settings = settings.model_copy(update={"engine": chosen})
    workers = settings.server_workers()
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        lifespan="on",
        access_log=False,
    )
    if workers == 1:
        app = create_app(settings, detector=detector, onnx_model=onnx_model)
        server = uvicorn.Server(uvicorn.Config(app, **common))
        server.run()
        return 0 if server.started else 1
    del detector, onnx_model  # each worker loads (and exports) its own
    os.environ.update(settings_env(settings))
    # uvicorn's supervisor kills a worker that has not answered its ping for this long. Its default, 5 s, is
    # shorter than a worker's start on a busy machine: importing torch and onnxruntime and exporting the detector
    # hold the interpreter for seconds, and several replicas starting at once on 2 cores (the compose stack) had
    # every worker killed and restarted in a loop. A worker that truly hangs is still replaced, later.
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        **common,
    )
    return 0


def settings_env(settings: ServeSettings) -> dict[str, str]:
    """The settings as the ``LGM_*`` variables that rebuild them in a worker (lists comma-separated)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = ",".join(value) if isinstance(value, list) else str(value)
        env[f"LGM_{name.upper()}"] = text
    env["LGM_WORKERS"] = "1"  # a worker is one process
    env["LGM_THREADS"] = str(settings.torch_threads())
    return env
