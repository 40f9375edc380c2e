"""The README stays honest about configuration: every setting is in its table."""

from pathlib import Path

from tickvault.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`TICKVAULT_{name.upper()}`" not in text]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
