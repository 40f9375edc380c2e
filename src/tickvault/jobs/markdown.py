"""Markdown for the jobs' artifacts: tables, sizes, cells. One place, so every artifact reads alike.

Prefect renders artifacts as GitHub-flavoured markdown; a ``|`` inside a cell would split it, so
every cell goes through :func:`cell`. Pure functions, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["cell", "human_bytes", "table"]


def human_bytes(n: int) -> str:
    """Bytes for people: 512 B, 1.5 MB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def cell(value: object, limit: int | None = None) -> str:
    """One table cell: ``-`` for None, pipes escaped, newlines flattened, cut to ``limit`` characters."""
    if value is None:
        return "-"
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()) -> list[str]:
    """A markdown table as lines; ``right``: indexes of right-aligned (numeric) columns."""
    right = set(right)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines
