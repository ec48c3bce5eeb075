"""What ``make docker-smoke`` covers, checked without a Docker engine: every image the compose stack builds is
built offline by the smoke (a service whose image the smoke never built stops ``compose up --no-build``), every
pass checks Redis's container, and the shared-history judge of ``docker/smoke_predict.py`` tells a shared query
history from per-replica ones."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
from test_docker import ROOT, compose_config, needs_compose

SMOKE = (ROOT / "docker" / "smoke.sh").read_text()


def smoke_builds() -> dict[str, str]:
    """Dockerfile -> the image variable the smoke's offline ``build`` step tags, from smoke.sh itself."""
    return dict((f, v) for v, f in re.findall(r'^step "[^"]*" build "\$(\w+)" (\S+)', SMOKE, re.M))


@needs_compose
def test_every_image_compose_builds_is_built_offline_by_the_smoke():
    built = smoke_builds()
    services = compose_config("docker-compose.yml")["services"]
    dockerfiles = {s["build"]["dockerfile"] for s in services.values() if "build" in s}
    assert dockerfiles >= {"docker/Dockerfile", "docker/haproxy/Dockerfile", "docker/redis/Dockerfile"}
    assert dockerfiles <= set(built), f"compose builds {sorted(dockerfiles - set(built))}, the smoke does not"
    # and each build is given its offline inputs (the wheelhouse or a folder of .deb files)
    for f in dockerfiles:
        line = next(ln for ln in SMOKE.splitlines() if re.match(rf'^step "[^"]*" build "\$\w+" {f} ', ln))
        assert re.search(r"\b(WHEELHOUSE|DEBS)=\S+", line), line


@needs_compose
def test_redis_image_takes_its_deb_folder_from_the_environment(tmp_path):
    env = tmp_path / "offline.env"
    env.write_text("LGM_REDIS_DEBS=debs-redis\n")
    redis = compose_config("docker-compose.yml", env_file=str(env))["services"]["redis"]
    assert redis["build"]["args"]["DEBS"] == "debs-redis"
    assert re.search(r"\bdebs debs-redis redis-server\b", SMOKE)


def test_every_smoke_pass_checks_the_redis_container():
    passes = dict(re.findall(r"^\s+(bridge|host)\) COMPOSE=.*SERVICES=\(([^)]*)\)", SMOKE, re.M))
    assert set(passes) == {"bridge", "host"}
    for name, services in passes.items():
        assert "redis" in services.split(), name
    assert 'step "query history shared by the replicas (Redis)" shared_history' in SMOKE


# ---- the shared-history judge ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_predict():
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        spec = importlib.util.spec_from_file_location("smoke_predict", ROOT / "docker" / "smoke_predict.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "docker"))
    return module


class FakeStack:
    """Replicas behind round-robin; each request's client is flagged once its history holds ``flag_after``
    near-duplicates after the first query. ``shared``: one history for all replicas, else one each."""

    def __init__(self, replicas: int, flag_after: int, shared: bool) -> None:
        self.replicas, self.flag_after, self.shared = replicas, flag_after, shared
        self.n = 0
        self.histories: dict[str, list[bytes]] = {}
        self.clients: set[str] = set()

    def post_png(self, url: str, png: bytes, name: str, client: str | None = None):
        up = f"10.0.0.{self.n % self.replicas + 1}:8000"
        self.n += 1
        self.clients.add(client)
        key = "all" if self.shared else up
        seen = self.histories.setdefault(key, [])
        assert png not in seen, "the judge must send near-duplicates, never an exact repeat"
        seen.append(png)
        return {"client_flagged": len(seen) - 1 >= self.flag_after}, {"X-LGM-Upstream": up}


@pytest.mark.parametrize("replicas", [2, 3])
def test_shared_history_judge_passes_a_shared_store_and_fails_per_replica_ones(
    smoke_predict, monkeypatch, replicas
):
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 0, :3] = 255  # the nudge must not wrap a white pixel round to black
    for shared, rc in ((True, 0), (False, 1)):
        stack = FakeStack(replicas, flag_after=3, shared=shared)
        monkeypatch.setattr(smoke_predict, "post_png", stack.post_png)
        assert smoke_predict.shared_history("http://lb", digit, 3, replicas) == rc, shared
        assert len(stack.clients) == 1 and None not in stack.clients  # one client of its own


def test_shared_history_judge_fails_a_history_that_never_flags(smoke_predict, monkeypatch):
    stack = FakeStack(3, flag_after=10_000, shared=True)
    monkeypatch.setattr(smoke_predict, "post_png", stack.post_png)
    assert smoke_predict.shared_history("http://lb", np.zeros((1, 28, 28), np.uint8), 3, 3) == 1
