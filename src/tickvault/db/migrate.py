"""Versioned SQL migrations: ``NNN_name.sql`` applied once each, in order, each in one transaction.

A file may come in edition variants, ``NNN_name.apache.sql`` and ``NNN_name.timescale.sql``; the
runner picks the one matching the server's ``timescaledb.license``. Every applied file is recorded
(version, name, variant, sha256) in ``tickvault_migrations``; re-running is a no-op, a failing file
rolls back completely, and an applied file whose content changed is refused: migrations are history,
a change to the schema is a new file. A session advisory lock makes concurrent runs take turns.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

MIGRATIONS_TABLE = "tickvault_migrations"
_LOCK_KEY = 0x7469636B  # "tick": one advisory lock id for the migration runner
_NAME = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+?)(?:\.(?P<edition>apache|timescale))?\.sql$")


class MigrationError(RuntimeError):
    """A migration failed or the recorded history disagrees with the files on disk."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    edition: str | None
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def sql_dir() -> Path:
    return Path(str(resources.files("tickvault") / "sql"))


def discover(directory: Path | None = None) -> dict[int, list[Migration]]:
    """Migration files by version; more than one per version only as edition variants."""
    directory = directory or sql_dir()
    found: dict[int, list[Migration]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql or NNN_name.<edition>.sql")
        mig = Migration(int(match["version"]), match["name"], match["edition"], path)
        found.setdefault(mig.version, []).append(mig)
    for version, variants in found.items():
        plain = [m for m in variants if m.edition is None]
        if plain and len(variants) > 1:
            raise MigrationError(f"version {version:03d} has both a plain file and edition variants")
    return dict(sorted(found.items()))


def server_edition(conn: psycopg.Connection) -> str:
    """``apache`` or ``timescale`` (the value of ``timescaledb.license``)."""
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    if row is None or row[0] is None:
        raise MigrationError("the timescaledb extension is not loaded on this server (shared_preload_libraries)")
    return str(row[0])


def _select(variants: list[Migration], edition: str) -> Migration:
    if len(variants) == 1 and variants[0].edition is None:
        return variants[0]
    for mig in variants:
        if mig.edition == edition:
            return mig
    raise MigrationError(f"migration {variants[0].version:03d} has no variant for the '{edition}' edition")


def migrate(url: str, directory: Path | None = None, log=lambda msg: None) -> list[str]:
    """Apply pending migrations; return the names applied now (empty: already up to date)."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    edition    text,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    duration_ms double precision
                )"""
        )
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            edition = server_edition(conn)
            recorded = {
                row[0]: (row[1], row[2]) for row in conn.execute(f"SELECT version, checksum, name FROM {MIGRATIONS_TABLE}")
            }
            for version, variants in migrations.items():
                mig = _select(variants, edition)
                if version in recorded:
                    checksum, name = recorded[version]
                    if checksum != mig.checksum:
                        raise MigrationError(
                            f"{mig.path.name} was changed after it was applied (recorded sha256 {checksum[:12]}…, "
                            f"file {mig.checksum[:12]}…). Applied migrations are history: revert the edit and "
                            "put the change in a new migration file."
                        )
                    continue
                started = time.perf_counter()
                try:
                    with conn.transaction():
                        conn.execute(mig.sql)
                        conn.execute(
                            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, edition, checksum, duration_ms) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            (version, mig.name, mig.edition, mig.checksum, (time.perf_counter() - started) * 1000),
                        )
                except psycopg.Error as exc:
                    diag = exc.diag
                    where = f" (at character {diag.statement_position})" if diag.statement_position else ""
                    raise MigrationError(
                        f"{mig.path.name} failed and was rolled back, nothing of it remains: "
                        f"{diag.message_primary or exc}{where}"
                    ) from exc
                applied_now.append(mig.path.name)
                log(f"applied {mig.path.name} in {(time.perf_counter() - started) * 1000:.0f} ms")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
