"""How a running worker announces itself, so the profiler (and operators) can find it.

A worker writes ``{run_dir}/worker-{name}.json`` when it starts and removes it when it stops.
The file is written atomically (temporary file in the same directory, fsync, rename), so a reader
never sees half a registration. A registration whose process is gone — or whose pid now belongs
to a different process (pids are reused) — is *stale*: :func:`find_worker` reports it (logged and
named in the error) and ignores it; it never deletes files, the run directory belongs to workers.

A name belongs to one live worker. :func:`register_worker` claims it: under an exclusive ``flock``
on the run directory it refuses (:class:`WorkerNameTaken`) when a live process holds the name and
takes over a stale registration; :func:`unregister_worker` removes a file, under the same lock,
only when it still names the calling pid and its start time, so a worker never removes another's.
The lock is held for a read and a rename, never across I/O to anything else, and leaves no file.

This module must never signal, stop or otherwise touch the registered process: it only reads
``/proc`` through psutil.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
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
_UNINSPECTABLE = "cannot be inspected"  # psutil.AccessDenied: alive, but not ours to judge


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


class WorkerNameTaken(RuntimeError):
    """A live worker already holds this name; the message names its pid and how to proceed."""


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


@contextlib.contextmanager
def _run_dir_locked(run_dir: Path) -> Iterator[None]:
    """Exclusive flock on the run directory itself (no lock file to leave behind or race on)."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _live_holder(path: Path) -> tuple[WorkerInfo | None, str | None]:
    """(the live worker registered at ``path``, None) or (None, why it is free: absent or stale)."""
    try:
        info = _parse(path)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable registration ({type(exc).__name__}: {exc})"
    reason = _rejection(info)
    if reason is not None and _UNINSPECTABLE in reason:
        return info, None  # a process we may not inspect is not proven gone: do not take its name
    return (info, None) if reason is None else (None, reason)


def check_name_free(settings: Settings, name: str) -> None:
    """Raise :class:`WorkerNameTaken` if a live worker holds ``name`` (free: absent or stale).

    A check without a claim, for a command that wants to refuse before it starts anything else; the
    claim itself (:func:`register_worker`) checks again under the lock.
    """
    holder = _live_holder(registration_path(settings, name))[0]
    if holder is not None:
        raise WorkerNameTaken(_taken_message(name, holder))


def _taken_message(name: str, holder: WorkerInfo) -> str:
    return (
        f"worker name {name!r} is taken: pid {holder.pid} ({' '.join(holder.cmdline or holder.argv)}) "
        f"has been running under it since {holder.started_at:%Y-%m-%d %H:%M:%S} UTC ({holder.path}). "
        f"Stop it first (kill -TERM {holder.pid}), or give this worker another TICKVAULT_WORKER_NAME."
    )


def register_worker(settings: Settings, *, name: str, pid: int, extra: dict[str, Any] | None = None) -> Path:
    """Claim ``name`` for ``pid``: write its registration atomically and return its path.

    Raises :class:`WorkerNameTaken` when a live process (pid alive, same start time and command
    line) is registered under ``name``; a stale registration is taken over (and logged).
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
    with _run_dir_locked(path.parent):
        holder, stale = _live_holder(path)
        if holder is not None:
            raise WorkerNameTaken(_taken_message(name, holder))
        if stale is not None:
            log.warning("taking over the stale registration %s: %s", path, stale)
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


def _is_registration_of(path: Path, pid: int) -> bool:
    """Whether ``path`` names ``pid`` *and* that process's start time (not an earlier owner of the pid)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # absent, unreadable or corrupt: not provably ours; the next claim takes it over
    if not isinstance(data, dict) or data.get("pid") != pid:
        return False
    recorded = data.get("create_time")
    if recorded is None:
        return True
    try:
        return abs(psutil.Process(pid).create_time() - float(recorded)) <= _CREATE_TIME_TOLERANCE_S
    except (psutil.Error, TypeError, ValueError):
        return False


def unregister_worker(settings: Settings, name: str, *, pid: int | None = None) -> bool:
    """Remove a worker's registration; return whether a file was removed.

    With ``pid`` (what a worker passes: its own), the file is removed only if it still names that
    pid and its start time, so a worker never removes a registration it does not own — another
    worker's, or its replacement's. Without ``pid`` (an operator's clean-up) it is removed as is.
    """
    path = registration_path(settings, name)
    if not path.parent.is_dir():
        return False
    with _run_dir_locked(path.parent):
        if pid is not None and not _is_registration_of(path, pid):
            if path.exists():
                log.info("registration %s is not pid %d's; left in place", path, pid)
            return False
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
