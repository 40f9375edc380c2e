"""The README stays honest about configuration: every setting is in its table, with its default."""

import re
from pathlib import Path

from tickvault.config import Settings, documented_settings

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIG_TABLE = README  # the configuration table's home
ROW = re.compile(r"^\| `(TICKVAULT_[A-Z0-9_]+)` \| `([^`]*)` \| (.*) \|$")


def _table_rows() -> dict[str, str]:
    """variable → default, from the configuration table's rows."""
    return {m[1]: m[2] for m in map(ROW.match, CONFIG_TABLE.read_text().splitlines()) if m}


def test_every_setting_is_documented_in_the_readme():
    text = CONFIG_TABLE.read_text()
    missing = [name for name in Settings.model_fields if f"`TICKVAULT_{name.upper()}`" not in text]
    assert not missing, f"add these to the configuration table in {CONFIG_TABLE.name}: {missing}"


def test_configuration_table_shows_each_settings_default_and_no_other_rows():
    table = _table_rows()
    expected = {variable: default for variable, default, _ in documented_settings()}
    wrong = {v: (table.get(v), d) for v, d in expected.items() if table.get(v) != d}
    stale = sorted(set(table) - set(expected))
    assert not wrong and not stale, (
        f"{CONFIG_TABLE.name}'s configuration table drifted from Settings; paste `tickvault config doc` "
        f"over it. (table, code) defaults that differ: {wrong}; rows for no setting: {stale}"
    )


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
