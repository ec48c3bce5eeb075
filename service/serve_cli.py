"""``lgm serve DIR``: every ``ServeSettings`` field as a flag (flags beat ``LGM_*`` env vars, which beat defaults).

The artifact is loaded and checked before uvicorn starts, so a missing, tampered or uncalibrated artifact stops
start-up with one line (``lgm serve: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from service.settings import ServeSettings

_GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("device", "model_name"),
    "network": ("host", "port", "log_level", "graceful_timeout"),
    "batching and threads": ("batching", "max_batch_size", "max_wait_ms", "threads"),
    "input caps": ("max_request_bytes", "max_image_pixels", "max_images"),
    "access": ("api_keys", "cors_origins", "perturb"),
}
_FLAG = {"api_keys": "--api-key", "cors_origins": "--cors-origin"}


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
    fields = ServeSettings.model_fields
    for group, names in _GROUPS.items():
        g = p.add_argument_group(group)
        for name in names:
            f = fields[name]
            flag = _FLAG.get(name, "--" + name.replace("_", "-"))
            default = f.get_default(call_default_factory=True)
            env = f"LGM_{name.upper()}"
            helptext = f"{f.description} (default: {default!r}; env {env})"
            if isinstance(default, bool):
                g.add_argument(
                    flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=helptext
                )
            elif isinstance(default, list):
                g.add_argument(flag, dest=name, action="append", default=None, help=helptext + "; repeatable")
            else:
                typ: Any = type(default) if isinstance(default, (int, float)) else str
                g.add_argument(flag, dest=name, type=typ, default=None, help=helptext)
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Env vars and defaults, overridden by the flags actually given. A bad value raises a one-line ValueError."""
    from pydantic import ValidationError

    given = {n: getattr(args, n) for n in ServeSettings.model_fields if getattr(args, n, None) is not None}
    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e.get("loc", ()))
        raise ValueError(f"bad setting {where}: {e.get('msg')}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from detector.scoring import Detector
    from service.app import create_app

    settings = settings_from_args(args)
    if settings.artifact is None:
        raise ValueError("no artifact: run `lgm serve DIR` (or set LGM_ARTIFACT)")
    detector = Detector.load(settings.artifact, settings.device)  # ValueError with one line when unusable
    app = create_app(settings, detector=detector)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
