"""deploy/compose.yaml parses and describes the layout deploy/README.md promises: web x2 and
worker x2 behind a proxy, after a one-shot migration, on PostgreSQL, an append-only Redis and
MinIO; every credential comes from deploy/.env."""

from __future__ import annotations

import re
from typing import Any

import yaml

from service.queue import SHUTDOWN_WAIT
from tests.deploy.conftest import DEPLOY, KNOWN_VARIABLES, SECRET_VARIABLES

COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PDBRIDGE = ("web", "worker", "migrate")


def seconds(text: str) -> float:
    value = re.fullmatch(r"(\d+)s", text)
    assert value is not None, text
    return float(value[1])


def test_the_listed_services_are_there() -> None:
    assert set(SERVICES) >= {
        "proxy",
        "web",
        "worker",
        "migrate",
        "postgres",
        "redis",
        "minio",
        "media-bucket",
    }


def test_two_web_and_two_worker_processes_after_the_migration() -> None:
    """Each runs the one image with its role, and starts only once `migrate` succeeded."""
    images = {SERVICES[name]["image"] for name in PDBRIDGE}
    assert len(images) == 1
    for name in PDBRIDGE:
        assert SERVICES[name]["command"] == [name]
        assert SERVICES[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in ("web", "worker"):
        assert SERVICES[name]["deploy"]["replicas"] == 2
        assert SERVICES[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert SERVICES[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_the_proxy_fronts_the_web_replicas() -> None:
    """Caddy with its config file mounted, sending to every `web` replica on its port."""
    proxy = SERVICES["proxy"]
    assert any(v.startswith("./Caddyfile:") for v in proxy["volumes"])
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert re.search(r"name web\s+port 8000", caddyfile)
    assert "respond @metrics 404" in caddyfile
    assert "web" in proxy["depends_on"]


def test_redis_keeps_the_queue_across_a_restart() -> None:
    """appendonly yes, fsync every second, no eviction, on a volume."""
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_state_lives_on_volumes() -> None:
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        assert any(v.endswith(f":{mount}") for v in SERVICES[name]["volumes"]), name
        assert SERVICES[name]["volumes"][0].split(":")[0] in COMPOSE["volumes"]


def test_healthchecks_and_stop_grace() -> None:
    """Servers have healthchecks; the worker's is arq's (`worker --check`); a stopping worker
    gets longer than its job wait."""
    for name in ("postgres", "redis", "minio"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD"
    assert SERVICES["worker"]["healthcheck"]["test"] == ["CMD", "pdbridge", "worker", "--check"]
    assert "healthcheck" not in SERVICES["web"]  # the image's own: GET /healthz
    assert seconds(SERVICES["worker"]["stop_grace_period"]) > SHUTDOWN_WAIT


def test_media_goes_to_the_minio_bucket() -> None:
    env = SERVICES["web"]["environment"]
    assert env["MEDIA_STORE"].startswith("s3://")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "mc mb --ignore-existing" in " ".join(SERVICES["media-bucket"]["command"])


def test_no_secret_is_written_in_the_file() -> None:
    """Every credential is a ${VARIABLE} from deploy/.env; each pdbridge variable is one the
    service reads (a typo would be silently ignored)."""
    for name in PDBRIDGE:
        environment = SERVICES[name]["environment"]
        for variable, value in environment.items():
            assert variable in KNOWN_VARIABLES, f"{name}: {variable} is not read by pdbridge"
            if variable in SECRET_VARIABLES and variable != "REDIS_URL":
                assert "${" in str(value), f"{name}: {variable} is written inline"
    for name in ("postgres", "minio"):
        for variable, value in SERVICES[name]["environment"].items():
            if "PASSWORD" in variable:
                assert str(value).startswith("${"), f"{name}: {variable} is written inline"


def test_the_env_example_names_every_required_variable() -> None:
    """An operator who fills in .env.example meets no `required variable` error."""
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = (DEPLOY / ".env.example").read_text()
    given = set(re.findall(r"^(\w+)=", example, re.M))
    assert required <= given, required - given
    assert "REPLACE" in example.upper() or "replace-with" in example
