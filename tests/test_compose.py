"""docker-compose.yml, checked without a Docker engine (none runs here or in CI): parsed, and
what must hold read off it — real `vinr-recon` commands on the image, Redis with AOF, the
release before web and worker, each process's own health check, no secret in the file, and
only real settings passed to vinr-recon."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vinr_recon.cli import build_parser
from vinr_recon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
APP = ("release", "web", "worker")  # the services that run vinr-recon


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def argv(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_the_stack_is_postgresql_redis_release_web_and_worker(services):
    assert set(services) == {"postgres", "redis", *APP}


def test_every_process_runs_a_real_vinr_recon_subcommand_on_the_projects_image(services):
    dockerfile = (ROOT / "Dockerfile").read_text()
    # No ENTRYPOINT: a service's command replaces the image's CMD whole, so it must be a whole command.
    assert not re.search(r"^\s*ENTRYPOINT\b", dockerfile, re.MULTILINE)
    script = Path(sys.executable).with_name("vinr-recon")
    expected = {"release": ("db", "upgrade"), "web": ("serve",), "worker": ("worker",)}
    for name in APP:
        service = services[name]
        assert service["build"] == "." and (ROOT / "Dockerfile").is_file(), name
        assert service["image"] == services["web"]["image"], "one image for every process"
        words = argv(service)
        assert words[0] == "vinr-recon", name
        parsed = build_parser().parse_args(words[1:])
        assert (parsed.command, *([parsed.db_command] if parsed.command == "db" else [])) == expected[name]
        shown = subprocess.run([str(script), *words[1:], "--help"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: vinr-recon {' '.join(words[1:])}"), name
    # The web is published on the PORT it listens on (it is given no --port), on every interface
    # of its container, whatever HOST a .env says.
    image_port = re.search(r"^ENV .*\bPORT=(\d+)", dockerfile.replace("\\\n", " "), re.MULTILINE)[1]
    environment = services["web"]["environment"]
    [published] = services["web"]["ports"]
    assert published.rsplit(":", 1)[1] == str(environment["PORT"]) == image_port
    assert environment["HOST"] == "0.0.0.0" and build_parser().parse_args(argv(services["web"])[1:]).port is None


def test_redis_keeps_the_queue_with_aof_in_a_volume_and_postgresql_its_data_in_another(services):
    redis = argv(services["redis"])
    assert redis[0] == "redis-server" and redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--appendfsync") + 1] in ("everysec", "always")
    volumes = yaml.safe_load(COMPOSE.read_text())["volumes"]
    mounts = {name: [v.split(":") for v in services[name]["volumes"]] for name in ("redis", "postgres")}
    assert [m[1] for m in mounts["redis"]] == ["/data"] and mounts["redis"][0][0] in volumes
    assert [m[1] for m in mounts["postgres"]] == ["/var/lib/postgresql/data"] and mounts["postgres"][0][0] in volumes


def test_the_release_runs_once_after_postgresql_is_healthy_and_web_and_worker_wait_for_it(services):
    release = services["release"]
    assert release["restart"] == "no"
    assert release["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker"):
        after = services[name]["depends_on"]
        assert after["release"] == {"condition": "service_completed_successfully"}, name
        assert after["postgres"] == after["redis"] == {"condition": "service_healthy"}, name
        assert services[name]["restart"] == "unless-stopped"


def test_each_process_has_a_health_check_that_fits_it(services):
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["release"]["healthcheck"] == {"disable": True}  # it exits; /healthz never answers
    assert "healthcheck" not in services["web"]  # the image's: GET /healthz (tests/test_dockerfile.py)
    check = services["worker"]["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "vinr-recon"
    parsed = build_parser().parse_args(check[2:])
    assert (parsed.command, parsed.check) == ("worker", True)  # tests/test_worker_check.py runs it


def test_no_secret_is_written_in_the_file(services):
    text = COMPOSE.read_text()
    assert not re.search(r"whsec_|vinr_(test|live)_|sk_|BEGIN [A-Z ]*PRIVATE KEY", text)
    for service in services.values():
        for name, value in (service.get("environment") or {}).items():
            value = str(value)
            if re.search(r"SECRET|KEY|TOKEN|PASSWORD", name):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", value), (name, "must come from .env")
            for password in re.findall(r"://[^:/@]+:([^@]+)@", value):  # a URL's password, too
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", password), name
    for name in APP:
        assert services[name]["env_file"] == ".env"
    assert {".env"} <= set((ROOT / ".gitignore").read_text().split())
    assert {".env"} <= set((ROOT / ".dockerignore").read_text().split())


def test_vinr_recon_is_passed_real_settings_only_and_every_variable_interpolated_is_in_env_example(services):
    settings = {name.upper() for name in Settings.model_fields}
    for name in APP:
        passed = set(services[name].get("environment") or {})
        assert passed and passed <= settings, (name, passed - settings)
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if re.match(r"[A-Z_]+=", line)}
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    assert interpolated and interpolated <= example, interpolated - example
    # What the stack's own services are called is what vinr-recon is pointed at.
    environment = services["web"]["environment"]
    assert "@postgres:5432/" in environment["DATABASE_URL"] and environment["REDIS_URL"].startswith("redis://redis:")
    pg = services["postgres"]["environment"]
    assert environment["DATABASE_URL"].endswith(f"/{pg['POSTGRES_DB']}")
    assert environment["DATABASE_URL"].startswith(f"postgresql://{pg['POSTGRES_USER']}:")

