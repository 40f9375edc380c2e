"""docker/ cannot run on CI machines, so these tests keep its files honest: they parse, and what they
name (services, TICKVAULT_ variables, commands, entry points, the work pool) exists in the code."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from tickvault.config import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
# Not a Settings field: a template value of prefect.yaml's pull step, set by `tickvault deploy`.
TEMPLATE_VARS = {"TICKVAULT_PROJECT_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))


def _tickvault_vars(text: str) -> set[str]:
    return set(re.findall(r"\bTICKVAULT_[A-Z0-9_]+", text))


def _command_exists(app: typer.Typer, path: list[str]) -> bool:
    cmd = typer.main.get_command(app)
    for part in path:
        commands = getattr(cmd, "commands", None)
        if not commands or part not in commands:
            return False
        cmd = commands[part]
    return True


def test_compose_has_the_production_services(compose: dict) -> None:
    services = compose["services"]
    assert {"timescaledb", "prefect-db", "prefect-server", "minio", "worker", "prefect-worker"} <= set(services)
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:") and "pg17" in services["timescaledb"]["image"]
    assert services["prefect-db"]["image"].startswith("postgres:")
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["minio"]["image"].startswith("minio/minio")


def test_prefect_worker_can_profile_the_streaming_worker(compose: dict) -> None:
    services = compose["services"]
    pw = services["prefect-worker"]
    assert pw["pid"] == "service:worker"
    assert "SYS_PTRACE" in pw["cap_add"]
    # Registrations are checked against the hostname (pids are per host): both must agree.
    assert pw["hostname"] == services["worker"]["hostname"]
    # Both see the run directory where the worker registers itself.
    run_mounts = {v.split(":")[1] for v in services["worker"]["volumes"]}
    assert run_mounts & {v.split(":")[1] for v in pw["volumes"]}


def test_long_running_services_have_health_checks_restart_policies_and_named_volumes(compose: dict) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        one_off = svc.get("restart") in ("no", "on-failure") or "profiles" in svc
        if not one_off:
            assert svc.get("restart") in ("unless-stopped", "always"), name
            assert "healthcheck" in svc, name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not a named volume"
    for name in ("timescaledb", "prefect-db", "minio"):
        assert services[name]["volumes"], name


def test_published_ports_bind_to_loopback(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_secrets_come_from_an_uncommitted_env_file(compose: dict) -> None:
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    assert not re.search(r"^\s*[A-Z_]*(PASSWORD|SECRET)[A-Z_]*:\s*[^$\s{]", text, re.M), "a secret is written into compose.yaml"
    assert any(".env" in (svc.get("env_file") or []) for svc in compose["services"].values())
    assert (DOCKER / ".env.example").is_file()
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_every_tickvault_variable_is_a_setting() -> None:
    known = {f"TICKVAULT_{name.upper()}" for name in Settings.model_fields} | TEMPLATE_VARS
    for path in (DOCKER / "compose.yaml", DOCKER / ".env.example", DOCKER / "Dockerfile", REPO / "prefect.yaml"):
        unknown = _tickvault_vars(path.read_text(encoding="utf-8")) - known
        assert not unknown, f"{path.name} uses variables Settings does not have: {sorted(unknown)}"


def test_env_example_parses_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from tickvault.config import load_settings

    for line in (DOCKER / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key.strip(), value.strip())
    settings = load_settings()
    assert settings.s3_bucket and settings.database_url is not None


def test_work_pool_agrees_with_prefect_yaml(compose: dict, prefect_yaml: dict) -> None:
    from tickvault.deploy import work_pool_name

    pool = work_pool_name(REPO)
    assert {d["work_pool"]["name"] for d in prefect_yaml["deployments"]} == {pool}
    command = compose["services"]["prefect-worker"]["command"]
    assert command[command.index("--pool") + 1] == pool
    assert command[command.index("--type") + 1] == "process"


def test_prefect_yaml_entry_points_are_flows(prefect_yaml: dict) -> None:
    from prefect import Flow

    for d in prefect_yaml["deployments"]:
        file, _, attr = d["entrypoint"].partition(":")
        spec = importlib.util.spec_from_file_location(f"_entry_{Path(file).stem}", REPO / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
        sys.path.insert(0, str(REPO))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(REPO))
            del sys.modules[spec.name]
        assert isinstance(getattr(module, attr), Flow), d["entrypoint"]
        assert d["schedules"] and all(s["timezone"] == "America/New_York" for s in d["schedules"])
        assert d["tags"] and "parameters" in d


def test_prefect_yaml_schedules_fit_a_trading_day(prefect_yaml: dict) -> None:
    by_name = {d["name"]: d for d in prefect_yaml["deployments"]}
    market_hours = [s["cron"] for s in by_name["reconcile-market-hours"]["schedules"]]
    assert market_hours == ["30-55/5 9 * * 1-5", "*/5 10-15 * * 1-5"]  # 09:30-15:55, not from 09:00
    assert by_name["reconcile-pre-open"]["schedules"][0]["cron"] == "0 9 * * 1-5"
    assert by_name["reconcile-after-close"]["schedules"][0]["cron"] == "10 16 * * 1-5"  # the closing auction
    assert all(d["concurrency_limit"] == 1 for d in prefect_yaml["deployments"])
    assert by_name["indicators-market-hours"]["schedules"][0]["cron"].startswith("* ")
    step = prefect_yaml["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert "TICKVAULT_PROJECT_DIR" in step["directory"]


def test_dockerfile_builds_one_image_for_worker_and_flows() -> None:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    for copied in ("src", "flows", "tasks", "prefect.yaml", "pyproject.toml", "setup.py"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, re.M), copied
    assert "TICKVAULT_PROJECT_DIR=/app" in text and "WORKDIR /app" in text
    # The image refuses to build without its compiled extensions: each of those checks runs here too
    # (the same import paths, on this install, which `make install` compiles), so a renamed module
    # cannot turn the build's check into an ImportError that no one meets until `docker build`.
    checks = re.findall(r'python -c "([^"]+)"', text)
    assert any("_columnar" in c or "columnar" in c for c in checks) and any("_compiled" in c for c in checks), checks
    for check in checks:
        done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (check, done.stderr)


def test_compose_commands_exist_in_the_cli(compose: dict) -> None:
    from tickvault.cli import app
    from tickvault.deploy import prefect_app

    for name, svc in compose["services"].items():
        command = svc.get("command")
        if isinstance(command, list) and command and command[0] == "tickvault":
            args = [a for a in command[1:] if not a.startswith("-")]
            if args[0] == "prefect":
                assert _command_exists(prefect_app, args[1:]), (name, command)
                if not _command_exists(app, ["prefect"]):
                    pytest.skip("prefect_app is not mounted in tickvault.cli yet (app.add_typer(prefect_app, name='prefect'))")
            assert _command_exists(app, args), (name, command)


def test_the_package_data_carries_every_runtime_file() -> None:
    """A wheel (the Docker image runs `pip install .`) must carry the migrations, the SQL recipes and
    the dashboard's static files: every non-Python file the package reads at run time."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tickvault"]
    package = REPO / "src" / "tickvault"
    runtime = [
        p.relative_to(package).as_posix() for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".so", ".c") and "__pycache__" not in p.parts
    ]
    assert any(r.startswith("sql/") for r in runtime) and any(r.startswith("ui/static/") for r in runtime)
    missing = [r for r in runtime if not any(fnmatch.fnmatchcase(r, g) for g in globs)]
    assert not missing, f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"
