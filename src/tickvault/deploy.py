"""`tickvault deploy`: put the four flows of ``prefect.yaml`` on a Prefect server and run them.

Against ``PREFECT_API_URL`` when it is set (Prefect's own setting, from the environment or the
active Prefect profile); otherwise against a local ``prefect server start`` on 127.0.0.1 whose
state (SQLite, logs, pidfile) lives under ``{db_cache_dir}/prefect``, started in the background if
it is not already answering. Then: create the ``process`` work pool named in ``prefect.yaml`` (if
missing), ``prefect --no-prompt deploy --all`` from the project directory, and start a Prefect
worker on the pool in the foreground (Ctrl-C stops it; the local server keeps running until
``tickvault prefect server --stop``).

Everything Prefect is driven through its own CLI in subprocesses with an explicit environment,
so this module never changes the calling process's Prefect settings. It must never bind anything
but 127.0.0.1, and never stop a server it did not start (the pidfile says which one it started).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import typer

from tickvault.config import Settings, load_settings

__all__ = [
    "DeployError",
    "LocalPrefectServer",
    "deploy_command",
    "deploy_main",
    "deploy_flows",
    "deployments",
    "DeploymentSpec",
    "ensure_work_pool",
    "prefect_app",
    "project_dir",
    "work_pool_name",
    "worker_command",
]

LOCAL_PORT = 4200  # Prefect's usual port, so the UI is where its docs say: http://127.0.0.1:4200
# A first start migrates the SQLite database (~10-20 s on a small VM); later starts take a few seconds.
SERVER_START_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 300.0  # one `prefect deploy --all` registers four deployments: seconds, not minutes


class DeployError(RuntimeError):
    """A step of the deployment failed; the message names the step and carries Prefect's output."""


def project_dir() -> Path:
    """The directory holding ``prefect.yaml``: the working directory if it has one, else the
    source checkout this module belongs to (an editable install)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "prefect.yaml").is_file():
            return candidate
    raise DeployError(f"no prefect.yaml in {Path.cwd()} nor in the tickvault checkout; run from the repository")


def _prefect_yaml(project: Path | None = None) -> dict:
    import yaml

    return yaml.safe_load(((project or project_dir()) / "prefect.yaml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of ``prefect.yaml``, as ``prefect deployment run`` names it."""

    flow: str  # the flow's name (@flow(name=...)), e.g. "reconcile"
    name: str  # the deployment's name, e.g. "reconcile-market-hours"
    description: str
    schedules: tuple[str, ...]  # cron expressions

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


def deployments(project: Path | None = None) -> list[DeploymentSpec]:
    """The deployments of ``prefect.yaml`` in file order. The flow name is the entrypoint's module
    name with dashes (``flows/refresh_indicators.py`` → ``refresh-indicators``), which is how every
    tickvault flow is named; a deployment whose name is not unique is refused (the UI's list shows
    deployment names in bold and the flow name small, so a repeated name reads as one deployment)."""
    specs = []
    for d in _prefect_yaml(project).get("deployments", []):
        module = d["entrypoint"].split(":", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        specs.append(DeploymentSpec(
            flow=module.replace("_", "-"),
            name=d["name"],
            description=" ".join(str(d.get("description", "")).split()),
            schedules=tuple(s["cron"] for s in d.get("schedules") or [] if "cron" in s),
        ))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise DeployError(f"prefect.yaml: deployment name {spec.name!r} is used twice; names must be unique")
        seen.add(spec.name)
    return specs


def work_pool_name(project: Path | None = None) -> str:
    """The work pool every deployment in ``prefect.yaml`` targets (there is exactly one)."""
    doc = _prefect_yaml(project)
    names = {d["work_pool"]["name"] for d in doc.get("deployments", [])}
    if len(names) != 1:
        raise DeployError(f"prefect.yaml must deploy to exactly one work pool, found {sorted(names)}")
    return names.pop()


def _prefect_bin() -> str:
    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.is_file() else "prefect"


def prefect_env(api_url: str, *, home: Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Prefect subprocess talking to ``api_url`` (no telemetry leaves the host)."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_CLI_PROMPT": "false",
        }
    )
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


def _run(step: str, cmd: list[str], env: Mapping[str, str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            cmd, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"{step}: `{' '.join(cmd)}` did not finish within {CLI_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise DeployError(f"{step} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class LocalPrefectServer:
    """The local ``prefect server start`` on 127.0.0.1, its state under ``home``."""

    home: Path
    port: int = LOCAL_PORT
    host: str = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings: Settings, port: int = LOCAL_PORT) -> LocalPrefectServer:
        return cls(home=settings.db_cache_dir / "prefect", port=port)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.home / f"server-{self.port}.pid"

    @property
    def logfile(self) -> Path:
        return self.home / f"server-{self.port}.log"

    def env(self) -> dict[str, str]:
        return prefect_env(self.api_url, home=self.home)

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> subprocess.Popen[bytes] | None:
        """Start the server in the background unless it already answers; wait until it does.

        Returns the new process (None when one was already running). It runs in its own session,
        so it outlives this command; :meth:`stop` ends it.
        """
        if api_healthy(self.api_url):
            return None
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [_prefect_bin(), "server", "start", "--host", self.host, "--port", str(self.port)]
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n", encoding="utf-8")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DeployError(
                    f"prefect server exited with status {proc.returncode} while starting; last log lines:\n"
                    + self._log_tail()
                )
            if api_healthy(self.api_url, timeout=1.0):
                return proc
            try:
                proc.wait(timeout=0.5)  # wakes at once if it dies; otherwise the poll interval
            except subprocess.TimeoutExpired:
                pass
        proc.terminate()
        raise DeployError(f"prefect server did not answer at {self.api_url} within {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server this pidfile names (SIGTERM, then SIGKILL); False if none was running."""
        try:
            pid = int(self.pidfile.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return False
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            cmdline = ""
        if "prefect" not in cmdline or "server" not in cmdline:  # gone, or the pid was reused: not ours
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)  # its own session: uvicorn and its children go together
        except ProcessLookupError:
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            # psutil waits on a child (reaping it) and polls a process started by an earlier command.
            psutil.Process(pid).wait(timeout=timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return True


def ensure_work_pool(env: Mapping[str, str], name: str) -> bool:
    """Create the ``process`` work pool ``name`` unless it exists; True if it was created."""
    prefect = _prefect_bin()
    probe = subprocess.run(
        [prefect, "work-pool", "inspect", name], env=dict(env), capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S, check=False,
    )
    if probe.returncode == 0:
        return False
    _run("create work pool", [prefect, "work-pool", "create", name, "--type", "process"], env)
    return True


def deploy_flows(env: Mapping[str, str], project: Path) -> str:
    """``prefect --no-prompt deploy --all`` from ``project`` (its prefect.yaml); returns Prefect's output."""
    env = {**env, "TICKVAULT_PROJECT_DIR": str(project)}  # the pull step's working directory
    return _run("deploy", [_prefect_bin(), "--no-prompt", "deploy", "--all"], env, cwd=project)


def worker_command(pool: str, *, name: str | None = None) -> list[str]:
    cmd = [_prefect_bin(), "worker", "start", "--pool", pool, "--type", "process"]
    return cmd + (["--name", name] if name else [])


def resolve_api(settings: Settings, api_url: str | None = None) -> tuple[str, dict[str, str]]:
    """(API URL, environment for Prefect subprocesses): the given URL, PREFECT_API_URL, or the
    local server (started if needed)."""
    if api_url is None:
        from prefect.settings import get_current_settings

        configured = get_current_settings().api.url
        api_url = str(configured) if configured else None
    if api_url:
        return api_url, prefect_env(api_url)
    server = LocalPrefectServer.from_settings(settings)
    started = server.start()
    typer.echo(f"{'started' if started else 'using'} the local Prefect server: UI {server.ui_url} (state in {server.home})")
    return server.api_url, server.env()


def deploy_main(settings: Settings, *, start_worker: bool = True, api_url: str | None = None) -> None:
    """Create the work pool, deploy every flow of prefect.yaml, then (by default) run a worker."""
    api_url, env = resolve_api(settings, api_url)
    project = project_dir()
    pool = work_pool_name(project)
    created = ensure_work_pool(env, pool)
    typer.echo(f"work pool {pool!r} ({'created' if created else 'exists'}) on {api_url}")
    specs = deployments(project)  # refuses duplicate names before anything is deployed
    deploy_flows(env, project)
    typer.echo(f"deployed {len(specs)} deployments (schedules in New York time; run one with "
               f"`prefect deployment run <name>`):")
    width = max(len(s.full_name) for s in specs)
    for spec in specs:
        typer.echo(f"  {spec.full_name:<{width}}  {', '.join(spec.schedules) or 'no schedule'}")
    create_alert_automations(settings, api_url)
    if start_worker:
        cmd = worker_command(pool)
        typer.echo(f"starting a Prefect worker on {pool!r} (Ctrl-C stops it): {' '.join(cmd)}")
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env) if os.path.isabs(cmd[0]) else os.execvpe(cmd[0], cmd, env)


def create_alert_automations(settings: Settings, api_url: str) -> None:
    """The alert automations (tickvault.jobs.alerts) when TICKVAULT_ALERT_WEBHOOK_URL is set."""
    if settings.alert_webhook_url is None:
        typer.echo("alerts: TICKVAULT_ALERT_WEBHOOK_URL is not set, no automations created")
        return
    from tickvault.jobs.alerts import ensure_automations

    try:
        names = ensure_automations(settings, api_url)
    except Exception as exc:  # noqa: BLE001 - Prefect's client raises many kinds; say which step failed
        raise DeployError(f"creating the alert automations failed: {type(exc).__name__}: {exc}") from exc
    typer.echo(f"alerts: {len(names)} automations notify the webhook ({settings.alert_webhook_format} payloads): "
               + "; ".join(names))


# --- CLI ----------------------------------------------------------------------------------------

prefect_app = typer.Typer(help="Prefect: deploy the flows, run a local server, run a worker.", no_args_is_help=True)


@prefect_app.command("deploy")
def deploy_command(
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Start a Prefect worker after deploying."),
) -> None:
    """Deploy all flows of prefect.yaml (PREFECT_API_URL, else a local server) and start a worker."""
    try:
        deploy_main(load_settings(), start_worker=worker)
    except DeployError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@prefect_app.command("server")
def server_command(
    stop: bool = typer.Option(False, "--stop", help="Stop the local server this command started."),
    port: int = typer.Option(LOCAL_PORT, help="Port on 127.0.0.1."),
) -> None:
    """Start the local Prefect server on 127.0.0.1 in the background (or stop it)."""
    server = LocalPrefectServer.from_settings(load_settings(), port=port)
    if stop:
        typer.echo("stopped" if server.stop() else "no local Prefect server was running")
        return
    try:
        started = server.start()
    except DeployError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'started' if started else 'already running'}: UI {server.ui_url}, API {server.api_url}")
    typer.echo(f"  export PREFECT_API_URL={server.api_url}")


@prefect_app.command("worker")
def worker_command_cli() -> None:
    """Run a Prefect worker on the tickvault work pool in the foreground."""
    api_url, env = resolve_api(load_settings())
    cmd = worker_command(work_pool_name())
    typer.echo(f"Prefect worker on {api_url}: {' '.join(cmd)}")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env) if os.path.isabs(cmd[0]) else os.execvpe(cmd[0], cmd, env)
