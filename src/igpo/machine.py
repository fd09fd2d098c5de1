"""Where a measurement ran and what its repeats say: the record every speed figure and learning run carries.

Seconds measured on one CPU say little about another (per-core speed, vector units and the torch kernels they
select differ by 2x or more between machines of the same kind), so every benchmark JSON names its machine with
`machine_record()`, the load average at each repeat with `load_average()`, and each timed figure's repeats with
`summarize()` (median and spread).
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

# The vector units that select torch's CPU kernels (fp32 GEMM, attention) and so set the speed of a step.
CPU_FLAGS = ("avx2", "avx512f", "amx_tile")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none: not Linux)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def machine_record(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The machine and torch build a measurement ran on.

    cpu_model: the CPU's name (/proc/cpuinfo "model name", else `platform.processor()`, else None);
    cpu_flags: {flag: present} for `CPU_FLAGS` (None each where the flags are not known);
    cpu_capability: the vector unit torch's kernels were picked for (`torch.backends.cpu.get_cpu_capability()`);
    cpus: logical CPUs (`os.cpu_count()`); torch_threads: `torch.get_num_threads()` when this is called;
    torch, python, platform: versions and OS.
    """
    info = _cpuinfo(cpuinfo)
    flags = set(info["flags"].split()) if "flags" in info else None
    return {
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_flags": {f: (f in flags) if flags is not None else None for f in CPU_FLAGS},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded to 0.01: how busy the machine was around a repeat."""
    return [round(x, 2) for x in os.getloadavg()]


def summarize(values: list[float]) -> dict:
    """Median and spread of one timed figure's repeats: n, median, min, max and the quartiles q1, q3
    (`statistics.quantiles`, inclusive method: the quartiles lie between min and max; one repeat has q1 = q3 = it).
    Raises ValueError on no values."""
    if not values:
        raise ValueError("summarize: no repeats to summarize")
    xs = [float(v) for v in values]
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs), "q1": q1, "q3": q3}
