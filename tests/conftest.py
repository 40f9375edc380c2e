"""Shared fixtures: a real TimescaleDB (the local one, or TICKVAULT_DATABASE_URL's server) with a
fresh, migrated database per test session, dropped at the end."""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator

import psycopg
import pytest

# alpaca-py imports websockets.legacy, which warns under websockets 16; that one warning only.
warnings.filterwarnings("ignore", message=".*websockets.legacy.*", category=DeprecationWarning)


def _admin_url() -> str:
    from tickvault.config import load_settings
    from tickvault.db.local import LocalTimescale

    settings = load_settings()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    local = LocalTimescale(settings, log=lambda m: None)
    local.up()
    return local.admin_url("postgres")


def _with_db(url: str, dbname: str) -> str:
    from tickvault.db import url_for_database

    return url_for_database(url, dbname)


@pytest.fixture(scope="session")
def admin_url() -> str:
    return _admin_url()


@pytest.fixture(scope="session")
def fresh_database(admin_url: str):
    """A factory: ``fresh_database(migrated=True)`` → URL of a new database, dropped at session end."""
    from tickvault.db.local import ensure_database
    from tickvault.db.migrate import migrate

    created: list[str] = []

    def make(migrated: bool = True) -> str:
        name = f"tickvault_test_{secrets.token_hex(4)}"
        ensure_database(_with_db(admin_url, "postgres"), name)
        created.append(name)
        url = _with_db(admin_url, name)
        if migrated:
            migrate(url)
        return url

    yield make
    if os.environ.get("TICKVAULT_KEEP_TEST_DB"):
        return
    with psycopg.connect(_with_db(admin_url, "postgres"), autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def db_url(fresh_database) -> str:
    """The session's migrated database."""
    return fresh_database()


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ui-screenshots",
        metavar="DIR",
        default=None,
        help="the browser tests (tests/test_flows.py's Prefect UI, tests/test_ui_browser.py's dashboard) save "
        "the docs' screenshots (small PNGs) into DIR, e.g. docs/img (`make screenshots`)",
    )
