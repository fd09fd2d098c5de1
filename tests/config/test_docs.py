from pathlib import Path

from igpo.config import Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def keys(model, prefix=""):
    for name in type(model).model_fields:
        value = getattr(model, name)
        if hasattr(type(value), "model_fields"):
            yield from keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_every_config_key_is_documented():
    text = DOC.read_text()
    missing = [k for k in keys(Config()) if f"`{k}`" not in text and f"`{k}`," not in text]
    assert not missing, f"undocumented config keys in docs/config.md: {missing}"
