"""The trader's SQL recipes in ``tickvault/sql/queries/``, runnable by name with psycopg parameters."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import psycopg


def recipe_dir() -> Path:
    return Path(str(resources.files("tickvault") / "sql" / "queries"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.sql"))


def recipe_sql(name: str) -> str:
    path = recipe_dir() / f"{name}.sql"
    if not path.is_file():
        raise KeyError(f"no recipe named {name!r}; have: {', '.join(recipe_names())}")
    return path.read_text()


def run_recipe(conn: psycopg.Connection, name: str, **params: object) -> list[tuple]:
    return conn.execute(recipe_sql(name), params).fetchall()
