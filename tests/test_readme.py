from pathlib import Path

from tools.readme_config import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_configuration_reference_matches_the_schema():
    text = README.read_text()
    assert render(text) == text, "run `python -m tools.readme_config` to regenerate the README's reference"


def test_readme_has_the_central_reference_and_the_sync_keys():
    text = README.read_text()
    assert "`central.database`" in text and "`sync.central_host`" in text
