"""Database access: where the server is, connection pools, migrations, COPY writer, local server."""

from __future__ import annotations

from urllib.parse import quote

from tickvault.config import Settings


def url_for_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database (query parameters kept)."""
    base, _, tail = url.rpartition("/")
    query = "?" + tail.split("?", 1)[1] if "?" in tail else ""
    return f"{base}/{quote(dbname, safe='')}{query}"


def database_url(settings: Settings) -> str:
    """The URL every component connects to: ``TICKVAULT_DATABASE_URL``, else the local server's."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from tickvault.db.local import LocalTimescale

    local = LocalTimescale(settings)
    if not local.password_path.exists():
        from tickvault.db.local import LocalDatabaseError

        raise LocalDatabaseError("the local TimescaleDB has not been created yet: run `tickvault db up`")
    return local.admin_url(quote(settings.db_name, safe=""))
