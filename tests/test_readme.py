"""The README and docs/ stay honest: every setting is in the configuration table with its default,
and every link between them leads to a file and heading that exist."""

import re
from pathlib import Path

from tickvault.config import Settings, documented_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_TABLE = ROOT / "docs" / "configuration.md"  # the configuration table's home
ROW = re.compile(r"^\| `(TICKVAULT_[A-Z0-9_]+)` \| `([^`]*)` \| (.*) \|$")
LINK = re.compile(r"\]\(([^)\s]+\.md)(?:#([^)\s]+))?\)")


def _table_rows() -> dict[str, str]:
    """variable → default, from the configuration table's rows."""
    return {m[1]: m[2] for m in map(ROW.match, CONFIG_TABLE.read_text().splitlines()) if m}


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_setting_is_documented_in_the_configuration_table():
    text = CONFIG_TABLE.read_text()
    missing = [name for name in Settings.model_fields if f"`TICKVAULT_{name.upper()}`" not in text]
    assert not missing, f"add these to the configuration table in {CONFIG_TABLE.relative_to(ROOT)}: {missing}"


def test_configuration_table_shows_each_settings_default_and_no_other_rows():
    table = _table_rows()
    expected = {variable: default for variable, default, _ in documented_settings()}
    wrong = {v: (table.get(v), d) for v, d in expected.items() if table.get(v) != d}
    stale = sorted(set(table) - set(expected))
    assert not wrong and not stale, (
        f"{CONFIG_TABLE.relative_to(ROOT)}'s configuration table drifted from Settings; paste `tickvault config "
        f"doc` over it. (table, code) defaults that differ: {wrong}; rows for no setting: {stale}"
    )


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text


def test_links_between_readme_and_docs_lead_to_existing_files_and_headings():
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}: no such file")
                continue
            headings = {_anchor(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}
            if anchor and anchor not in headings:
                broken.append(f"{page.relative_to(ROOT)} → {target}#{anchor}: no such heading")
    assert not broken, "\n".join(broken)
