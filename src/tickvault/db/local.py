"""The local TimescaleDB that tickvault starts by itself when ``TICKVAULT_DATABASE_URL`` is unset.

On a Debian/Ubuntu host with root it builds, once, a Debian 13 ("trixie") root filesystem with
PostgreSQL 17 and the timescaledb extension into a cache directory outside the repository, then
runs the server inside it with ``chroot`` as the ``postgres`` user, on 127.0.0.1 only.

Layout under ``settings.db_cache_dir`` (default ``~/.cache/tickvault``)::

    trixie/            the finished root filesystem (only ever renamed into place when complete)
    trixie.partial/    a build in progress; found at the start of a build = interrupted, removed
    db.lock            flock held by every `up`/`down` so concurrent calls serialise
    password-PORT      the cluster's superuser password (0600), generated at init

Each cluster's data directory lives inside the root filesystem at /var/lib/tickvault/pgdata-PORT,
so the server never sees a host path, and two clusters (say, a test's) can share one build. This module must never bind anything beyond loopback and
never print the password.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tickvault.config import Settings

SUITE = "trixie"
PACKAGES = ("postgresql-17", "postgresql-17-timescaledb")
PG_BIN = "/usr/lib/postgresql/17/bin"
COMPLETE_MARKER = "etc/tickvault-rootfs-complete"

# Server settings for an ingest-heavy, single-machine TimescaleDB. Each line says why.
TUNING = """\
# Written by tickvault (src/tickvault/db/local.py). Tuned for batched COPY ingest on a small host.
listen_addresses = '127.0.0.1'            # loopback only, never beyond
unix_socket_directories = '/tmp'          # inside the chroot; clients use TCP on 127.0.0.1
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off         # no network calls from the server
# 512 MB keeps the current chunks and their (symbol, time) indexes in memory while the host
# keeps room for the worker, Prefect and tests (Timescale's 25%-of-RAM advice assumes a dedicated box).
shared_buffers = 512MB
# A large WAL budget spaces checkpoints by time, not by ingest volume: each checkpoint after a burst
# of COPY forces full-page writes, the main write amplification of an insert-only workload.
max_wal_size = 4GB
min_wal_size = 512MB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9        # spread checkpoint I/O over the interval
wal_buffers = 64MB                        # one COPY batch of ~20k rows fits without WAL-buffer waits
wal_compression = lz4                     # shrinks full-page images; cheap on CPU
synchronous_commit = on                   # a committed batch is durable: the writer's metrics rely on it
# Timescale runs one job scheduler per database that has the extension, plus the jobs themselves,
# in background workers: 32 covers tickvault's database, scratch databases of tests and benchmarks
# running beside it, and their jobs (an idle scheduler costs a few MB). max_worker_processes must
# cover them plus parallel query workers and the launcher.
timescaledb.max_background_workers = 32
max_worker_processes = 40
max_parallel_workers = 2                  # 2 cores
max_parallel_workers_per_gather = 1
work_mem = 32MB                           # OHLCV refreshes sort per bucket
maintenance_work_mem = 256MB              # index builds after drop_chunks / migrations
random_page_cost = 1.1                    # SSD
jit = off                                 # trade-history queries are < 10 ms; JIT compile costs more
huge_pages = off
dynamic_shared_memory_type = mmap         # the chroot has no /dev/shm tmpfs
max_connections = 100
logging_collector = on
log_directory = 'log'
log_min_duration_statement = 1000         # log anything slower than 1 s
"""


class LocalDatabaseError(RuntimeError):
    """The local TimescaleDB could not be built, started or stopped; the message says why and what to do."""


UNSUPPORTED_HOST = (
    "tickvault cannot start its own TimescaleDB here: {reason}. The embedded server needs a "
    "Debian or Ubuntu host with root (it builds a Debian root filesystem with debootstrap and runs "
    "PostgreSQL 17 + timescaledb inside it with chroot). Either run the whole stack with "
    "docker/compose.yaml (see docs/docker.md), or start TimescaleDB with `docker run -d -p 127.0.0.1:5432:5432 "
    "-e POSTGRES_PASSWORD=... timescale/timescaledb:latest-pg17` and set TICKVAULT_DATABASE_URL="
    "postgresql://postgres:PASSWORD@127.0.0.1:5432/postgres, or point TICKVAULT_DATABASE_URL at any "
    "PostgreSQL server with the timescaledb extension."
)


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pid: int | None
    port: int
    built: bool
    initialised: bool
    root: Path


def _chroot_binary() -> str:
    # Resolved on the host's PATH; the environment handed to the child has the chroot's PATH.
    return shutil.which("chroot") or "/usr/sbin/chroot"


class LocalTimescale:
    """Build, initialise, start, stop and describe the embedded TimescaleDB."""

    def __init__(self, settings: Settings, log=print) -> None:
        self.settings = settings
        self.cache = settings.db_cache_dir.expanduser()
        self.root = self.cache / SUITE
        self.partial = self.cache / f"{SUITE}.partial"
        self.lock_path = self.cache / "db.lock"
        self.port = settings.db_port
        self.password_path = self.cache / f"password-{self.port}"
        self.pgdata = f"/var/lib/tickvault/pgdata-{self.port}"  # path inside the chroot
        self.log = log

    # --- paths ----------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / self.pgdata.lstrip("/")

    @property
    def built(self) -> bool:
        return (self.root / COMPLETE_MARKER).is_file()

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    # --- checks ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """Raise :class:`LocalDatabaseError` with the one-paragraph advice if this host cannot run it."""
        if platform.system() != "Linux":
            raise LocalDatabaseError(UNSUPPORTED_HOST.format(reason=f"this is {platform.system()}, not Linux"))
        if os.geteuid() != 0:
            raise LocalDatabaseError(UNSUPPORTED_HOST.format(reason="it needs root (chroot and debootstrap)"))
        if self.built:
            return
        if shutil.which("debootstrap") is None:
            if shutil.which("apt-get") is None:
                raise LocalDatabaseError(UNSUPPORTED_HOST.format(reason="neither debootstrap nor apt-get is installed"))
            self.log("installing debootstrap with apt-get (once)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
            install = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "debootstrap"], capture_output=True, text=True, env=env
            )
            if install.returncode != 0 or shutil.which("debootstrap") is None:
                raise LocalDatabaseError(
                    UNSUPPORTED_HOST.format(
                        reason="debootstrap is missing and `apt-get install debootstrap` failed: "
                        + (install.stderr or update.stderr).strip()[-500:]
                    )
                )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache lock: two `db up` at once serialise instead of corrupting the build."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- build ----------------------------------------------------------------------------
    def build(self) -> float:
        """Build the root filesystem if missing; returns seconds spent (0 when already built)."""
        if self.built:
            return 0.0
        started = time.monotonic()
        if self.root.exists():
            # A root without the marker was renamed into place by something else; do not trust it.
            self.log(f"{self.root} is incomplete; rebuilding")
            shutil.rmtree(self.root)
        if self.partial.exists():
            self.log(f"found an interrupted build at {self.partial}; removing it")
            shutil.rmtree(self.partial)
        self.log(
            f"building a Debian {SUITE} root with PostgreSQL 17 + timescaledb in {self.root} "
            "(once; about a minute and 700 MB)"
        )
        cmd = [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            str(self.partial),
            self.settings.debian_mirror,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise LocalDatabaseError(
                f"debootstrap failed (exit {proc.returncode}); the partial build stays at {self.partial} "
                "and is removed by the next `tickvault db up`. Last lines:\n" + "\n".join(tail)
            )
        for required in (f"{PG_BIN}/postgres", f"{PG_BIN}/initdb"):
            if not (self.partial / required.lstrip("/")).exists():
                raise LocalDatabaseError(f"debootstrap finished but {required} is missing in {self.partial}")
        if not list((self.partial / "usr/lib/postgresql/17/lib").glob("timescaledb*.so")):
            raise LocalDatabaseError("debootstrap finished but the timescaledb extension is not installed")
        (self.partial / COMPLETE_MARKER).write_text(f"built {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        os.rename(self.partial, self.root)
        return time.monotonic() - started

    # --- cluster --------------------------------------------------------------------------
    def _postgres_ids(self) -> tuple[int, int]:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "postgres":
                return int(fields[2]), int(fields[3])
        raise LocalDatabaseError(f"no postgres user in {self.root}/etc/passwd; remove {self.root} and run `db up`")

    def _chroot(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/var/lib/postgresql"}
        proc = subprocess.run(
            [_chroot_binary(), "--userspec=postgres:postgres", str(self.root), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise LocalDatabaseError(f"{' '.join(argv[:2])} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        return proc

    def password(self) -> str:
        return self.password_path.read_text().strip()

    def initialise(self) -> bool:
        """Create the cluster once; returns True when it was created now."""
        if self.initialised:
            return False
        uid, gid = self._postgres_ids()
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-initialised directory from an interrupted initdb
        self.data_dir.mkdir(parents=True, mode=0o700)
        for path in (self.data_dir.parent, self.data_dir):
            os.chown(path, uid, gid)
        if not self.password_path.exists():
            fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24) + "\n")
        pwfile = self.root / "tmp" / f"tickvault-pw-{os.getpid()}"
        pwfile.write_text(self.password() + "\n")
        os.chown(pwfile, uid, gid)
        os.chmod(pwfile, 0o600)
        try:
            self._chroot(
                "initdb",
                "-D", self.pgdata,
                "-U", "postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                f"--pwfile=/tmp/{pwfile.name}",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        (self.data_dir / "tickvault.conf").write_text(TUNING + f"port = {self.port}\n")
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\ninclude 'tickvault.conf'\n")
        os.chown(self.data_dir / "tickvault.conf", uid, gid)
        return True

    def running_pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def start(self) -> bool:
        """Start the server; returns False when it was already running."""
        if self.running_pid() is not None:
            return False
        # The tuning is tickvault's own file: rewritten at each start, so a newer tickvault's settings
        # reach a cluster initialised by an older one.
        conf = self.data_dir / "tickvault.conf"
        if conf.exists() and conf.read_text() != TUNING + f"port = {self.port}\n":
            stat = conf.stat()
            conf.write_text(TUNING + f"port = {self.port}\n")
            os.chown(conf, stat.st_uid, stat.st_gid)
        # `port` is also passed explicitly so a changed TICKVAULT_DB_PORT takes effect.
        proc = self._chroot(
            "pg_ctl", "-D", self.pgdata, "-l", f"{self.pgdata}/startup.log", "-w", "-t", "90",
            "-o", f"-p {self.port}", "start",
            check=False,
        )
        if proc.returncode != 0:
            log_tail = ""
            with contextlib.suppress(OSError):
                log_tail = (self.data_dir / "startup.log").read_text()[-1500:]
            raise LocalDatabaseError(
                f"the local TimescaleDB did not start (pg_ctl exit {proc.returncode}). Is port {self.port} taken? "
                f"Set TICKVAULT_DB_PORT to another. Server log:\n{log_tail}{proc.stderr[-500:]}"
            )
        return True

    def stop(self) -> bool:
        """Stop the server (fast shutdown: in-flight transactions roll back); False when not running."""
        if not self.initialised or self.running_pid() is None:
            return False
        self._chroot("pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "-t", "60", "stop")
        return True

    def admin_url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{quote(self.password(), safe='')}@127.0.0.1:{self.port}/{dbname}"

    def up(self) -> dict[str, float | bool]:
        """Build (once), initialise (once), start (unless running), create the database. Idempotent."""
        self.preflight()
        timings: dict[str, float | bool] = {}
        with self.locked():
            t0 = time.monotonic()
            timings["build_s"] = self.build()
            timings["initialised_now"] = self.initialise()
            timings["started_now"] = self.start()
            ensure_database(self.admin_url(), self.settings.db_name)
            timings["total_s"] = time.monotonic() - t0
        return timings

    def down(self) -> bool:
        with self.locked():
            return self.stop()

    def status(self) -> ServerStatus:
        pid = self.running_pid() if self.initialised else None
        return ServerStatus(pid is not None, pid, self.port, self.built, self.initialised, self.root)

    def psql_argv(self) -> tuple[list[str], dict[str, str]]:
        """psql 17 from inside the root (the host may have none); password via env, not argv."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGPASSWORD": self.password(), "HOME": "/tmp"}
        argv = [_chroot_binary(), str(self.root), "/usr/bin/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-d", self.settings.db_name]
        return argv, env


def ensure_database(admin_url: str, dbname: str) -> bool:
    """Create ``dbname`` with the timescaledb extension if it does not exist; True when created."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = admin_url.rsplit("/", 1)[0] + "/" + quote(dbname, safe="")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return not exists
