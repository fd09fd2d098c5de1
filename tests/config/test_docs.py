from pathlib import Path

import pytest
from pydantic import Field

from igpo.config import REFERENCE_COMMAND, Config, ConfigError, _Strict, _table, config_fields, config_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_what_the_generator_writes():
    assert DOC.read_text() == config_reference(), (
        f"docs/config.md is out of date: run `{REFERENCE_COMMAND}` (make docs)"
    )


def test_every_config_key_is_documented():
    text = DOC.read_text()
    keys = [k for k, _ in config_fields(Config)]
    assert "algorithm.gamma" in keys and "model.lora.r" in keys and "retrieval.web.backend" in keys
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing, f"undocumented config keys in docs/config.md: {missing}"


def test_a_row_holds_default_and_description():
    row = next(line for line in config_reference().splitlines() if line.startswith("| `algorithm.gamma` |"))
    assert row == "| `algorithm.gamma` | `1.0` | discount of the backward sum over turns |"


def test_a_field_without_description_is_refused():
    class Inner(_Strict):
        documented: int = Field(1, description="one")
        bare: int = 2

    class Section(_Strict):
        inner: Inner = Inner()

    with pytest.raises(ConfigError, match=r"sec\.inner\.bare: no description"):
        _table(Section, "sec.")


def test_a_section_lists_its_own_keys_before_nested_ones_and_escapes_pipes():
    class Inner(_Strict):
        x: str = Field("a", description="inner x")

    class Section(_Strict):
        inner: Inner = Inner()
        y: float = Field(1e-6, description="p | q")
        z: str = Field("\nz\n", description="a string default with newlines")

    assert _table(Section, "s.")[2:] == [
        "| `s.y` | `1e-6` | p \\| q |",
        '| `s.z` | `"\\nz\\n"` | a string default with newlines |',
        "| `s.inner.x` | `a` | inner x |",
    ]


def test_the_estimator_specific_keys_named_in_the_algorithm_section_are_those_the_config_checks():
    from igpo.algo.advantages import all_config_keys
    from igpo.config import AlgorithmConfig

    named = {k for k in AlgorithmConfig.model_fields if f"`{k}`" in AlgorithmConfig.__doc__}
    assert named == set(all_config_keys())
