"""How a running worker announces itself, so the profiler (and operators) can find it.

A worker writes ``{run_dir}/worker-{name}.json`` when it starts and removes it when it stops.
The file is written atomically (temporary file in the same directory, fsync, rename), so a reader
never sees half a registration. A registration whose process is gone — or whose pid now belongs
to a different process (pids are reused) — is *stale*: :func:`find_worker` reports it (logged and
named in the error) and ignores it; it never deletes files, the run directory belongs to workers.

This module must never signal, stop or otherwise touch the registered process: it only reads
``/proc`` through psutil.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from tickvault.config import Settings

log = logging.getLogger(__name__)

REGISTRATION_PREFIX = "worker-"
REGISTRATION_SUFFIX = ".json"
# A process's create_time (from /proc, in clock ticks) and the value recorded at registration can
# differ by rounding; a reused pid starts at least this much later than the original.
_CREATE_TIME_TOLERANCE_S = 1.0


class WorkerNotRunning(LookupError):
    """No live worker matches. The message says which worker was looked for, where (every
    registration looked at and why it was rejected) and the command that starts it; the same
    parts are attributes, for a report to lay out (``looked_for`` None: no name was given)."""

    def __init__(
        self,
        message: str,
        *,
        looked_for: str | None = None,
        run_dir: Path | None = None,
        looked_at: list[str] | None = None,
        start_command: str | None = None,
    ) -> None:
        super().__init__(message)
        self.looked_for = looked_for
        self.run_dir = run_dir
        self.looked_at = list(looked_at or [])
        self.start_command = start_command


class AmbiguousWorker(LookupError):
    """Several live workers are registered and no name was given to choose one."""


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as its registration describes it."""

    name: str
    pid: int
    started_at: datetime
    hostname: str
    argv: list[str]
    python: str
    path: Path
    cmdline: list[str] = field(default_factory=list)
    create_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def registration_path(settings: Settings, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid worker name {name!r}: must be non-empty, without '/' or a leading '.'")
    return settings.run_dir / f"{REGISTRATION_PREFIX}{name}{REGISTRATION_SUFFIX}"


def register_worker(settings: Settings, *, name: str, pid: int, extra: dict[str, Any] | None = None) -> Path:
    """Write this worker's registration atomically and return its path.

    ``pid`` is normally ``os.getpid()``. The process's command line and create time are recorded
    too, so a later reader can tell the registered process from an unrelated one reusing its pid.
    ``extra`` (e.g. ``{"metrics_port": 9464}``) must be JSON-serialisable and must not hold secrets:
    the file is world-readable.
    """
    path = registration_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = psutil.Process(pid)
        cmdline, create_time = proc.cmdline(), proc.create_time()
    except psutil.Error as exc:
        raise WorkerNotRunning(f"cannot register worker {name!r}: pid {pid} is not a running process ({exc})")
    own = pid == os.getpid()
    record = {
        "name": name,
        "pid": pid,
        "started_at": datetime.now(UTC).isoformat(),
        "hostname": socket.gethostname(),
        # sys.argv/sys.executable describe *this* interpreter; for another pid the cmdline is all we know.
        "argv": list(sys.argv) if own else cmdline,
        "python": sys.executable if own else (cmdline[0] if cmdline else ""),
        "cmdline": cmdline,
        "create_time": create_time,
        "extra": dict(extra or {}),
    }
    payload = json.dumps(record, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("registered worker %s (pid %d) at %s", name, pid, path)
    return path


def unregister_worker(settings: Settings, name: str, *, pid: int | None = None) -> bool:
    """Remove a worker's registration; return whether a file was removed.

    With ``pid``, the file is removed only if it still names that pid, so an old worker shutting
    down late cannot remove the registration of its replacement.
    """
    path = registration_path(settings, name)
    if pid is not None:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("pid") != pid:
                log.info("registration %s belongs to another pid; left in place", path)
                return False
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            pass  # unreadable or corrupt: ours to clean up
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    log.info("unregistered worker %s (%s)", name, path)
    return True


def _parse(path: Path) -> WorkerInfo:
    data = json.loads(path.read_text(encoding="utf-8"))
    started = datetime.fromisoformat(data["started_at"])
    return WorkerInfo(
        name=str(data["name"]),
        pid=int(data["pid"]),
        started_at=started if started.tzinfo else started.replace(tzinfo=UTC),
        hostname=str(data.get("hostname", "")),
        argv=list(data.get("argv", [])),
        python=str(data.get("python", "")),
        path=path,
        cmdline=list(data.get("cmdline", [])),
        create_time=data.get("create_time"),
        extra=dict(data.get("extra", {})),
    )


def _rejection(info: WorkerInfo) -> str | None:
    """Why this registration does not describe a live process, or None if it does."""
    here = socket.gethostname()
    if info.hostname and info.hostname != here:
        return f"registered on host {info.hostname!r}, this is {here!r} (pids are per host)"
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"pid {info.pid} has exited (zombie)"
        cmdline, create_time = proc.cmdline(), proc.create_time()
    except psutil.NoSuchProcess:
        return f"pid {info.pid} does not exist"
    except psutil.AccessDenied as exc:
        return f"pid {info.pid} cannot be inspected ({exc}); run as the worker's user or root"
    if info.create_time is not None and abs(create_time - info.create_time) > _CREATE_TIME_TOLERANCE_S:
        return f"pid {info.pid} was reused: now {' '.join(cmdline)!r}, started at a different time"
    if info.cmdline:
        if cmdline != info.cmdline:
            return f"pid {info.pid} is now {' '.join(cmdline)!r}, registered as {' '.join(info.cmdline)!r}"
    elif info.argv:
        # Hand-written registration without a cmdline: the script's arguments must still match.
        tail = info.argv[1:]
        if tail and cmdline[-len(tail):] != tail:
            return f"pid {info.pid} is now {' '.join(cmdline)!r}, registered argv {' '.join(info.argv)!r}"
    return None


def find_worker(settings: Settings, name: str | None = None) -> WorkerInfo:
    """The live worker called ``name`` (or the only live worker when ``name`` is None).

    Raises :class:`WorkerNotRunning` listing each registration file looked at and why it was
    rejected, or :class:`AmbiguousWorker` when ``name`` is None and several workers are live.
    """
    run_dir = settings.run_dir
    if name is not None:
        candidates = [registration_path(settings, name)]
    else:
        candidates = sorted(run_dir.glob(f"{REGISTRATION_PREFIX}*{REGISTRATION_SUFFIX}"))
    live: list[WorkerInfo] = []
    rejected: list[str] = []
    for path in candidates:
        try:
            info = _parse(path)
        except FileNotFoundError:
            rejected.append(f"{path}: no such file (the worker never registered or has stopped)")
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rejected.append(f"{path}: unreadable registration ({type(exc).__name__}: {exc})")
            continue
        reason = _rejection(info)
        if reason is None:
            live.append(info)
        else:
            log.warning("ignoring stale worker registration %s: %s", path, reason)
            rejected.append(f"{path}: stale, {reason}")
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        names = ", ".join(f"{w.name} (pid {w.pid})" for w in live)
        raise AmbiguousWorker(f"several workers are running in {run_dir}: {names}; choose one by name")
    raise _not_running(settings, name, candidates, rejected)


def start_command(settings: Settings, name: str) -> str:
    """The shell command that starts worker ``name`` where :func:`find_worker` looks for it."""
    return f"TICKVAULT_WORKER_NAME={name} TICKVAULT_RUN_DIR={settings.run_dir} tickvault worker run"


def _not_running(settings: Settings, name: str | None, candidates: list[Path], rejected: list[str]) -> WorkerNotRunning:
    run_dir = settings.run_dir
    command = start_command(settings, name or settings.worker_name)
    if name is not None:
        what = f"worker {name!r} is not running on this host"
    else:
        what = "no streaming worker is running on this host"
    if not candidates:
        where = f"no {REGISTRATION_PREFIX}*{REGISTRATION_SUFFIX} registration in {run_dir} (TICKVAULT_RUN_DIR)"
    else:
        where = f"registrations looked at in {run_dir} (TICKVAULT_RUN_DIR):\n  " + "\n  ".join(rejected)
    message = (
        f"{what}: {where}\n"
        f"Start it on this host, with the same TICKVAULT_RUN_DIR as the process that looks for it: `{command}`"
    )
    return WorkerNotRunning(message, looked_for=name, run_dir=run_dir, looked_at=rejected, start_command=command)
