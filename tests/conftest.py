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


# Databases a test body creates are dropped when that test ends (each one costs a TimescaleDB
# scheduler, a background worker, while it exists); those made by module- or session-scoped
# fixtures live until the session ends.
_IN_TEST_BODY: list[bool] = [False]
_BODY_DATABASES: list[str] = []
_DROP: list = []  # the session factory's drop function, once it exists


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _IN_TEST_BODY[0] = True
    try:
        yield
    finally:
        _IN_TEST_BODY[0] = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after the test's own fixtures closed their connections
    if _BODY_DATABASES and _DROP:
        names = list(_BODY_DATABASES)
        _BODY_DATABASES.clear()
        _DROP[0](names)


@pytest.fixture(scope="session")
def fresh_database(admin_url: str):
    """A factory: ``fresh_database(migrated=True)`` → URL of a new database; dropped when the test that
    made it in its body ends, or at session end when a fixture made it."""
    from tickvault.db.local import ensure_database
    from tickvault.db.migrate import migrate

    created: list[str] = []
    keep = bool(os.environ.get("TICKVAULT_KEEP_TEST_DB"))

    def drop(names: list[str]) -> None:
        if keep:
            return
        with psycopg.connect(_with_db(admin_url, "postgres"), autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                if name in created:
                    created.remove(name)

    def make(migrated: bool = True) -> str:
        name = f"tickvault_test_{secrets.token_hex(4)}"
        ensure_database(_with_db(admin_url, "postgres"), name)
        created.append(name)
        if _IN_TEST_BODY[0]:
            _BODY_DATABASES.append(name)
        url = _with_db(admin_url, name)
        if migrated:
            migrate(url)
        return url

    _DROP[:] = [drop]
    yield make
    _DROP.clear()
    drop(list(created))


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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's one real Prefect server (``prefect server start`` on 127.0.0.1, SQLite under a
    temp home, its scheduler off: tests/support/prefect.py says why). A start costs ~20 s, so the
    modules that need one share it; each leaves it as it found it (the Prefect worker of
    tests/test_flows.py stops with that module, before this server)."""
    from tests.support.net import free_port
    from tests.support.prefect import prefect_server_env
    from tickvault.deploy import LocalPrefectServer

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("prefect-home")
    for k, v in prefect_server_env(home).items():
        mp.setenv(k, v)
    server = LocalPrefectServer(home=home, port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        mp.undo()
