"""Generators that play scripted generations (as token ids), so tests reach every branch of an episode: defined in
`igpo.testing`, which `benchmarks/gpu_check.py` shares."""

from igpo.testing import ScriptedGenerator, ScriptedOverEngine

__all__ = ["ScriptedGenerator", "ScriptedOverEngine"]
