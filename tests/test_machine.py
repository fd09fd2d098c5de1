"""The record of where a measurement ran, and the median and spread of its repeats."""

import pytest
import torch

from igpo.machine import CPU_FLAGS, load_average, machine_record, summarize

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma amx_tile

processor\t: 1
model name\t: another name the record must not take
flags\t\t: fpu avx512f
"""


def test_machine_record_names_the_cpu_its_flags_and_torch(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    rec = machine_record(info)
    assert rec["cpu_model"] == "AMD EPYC 7B13 64-Core Processor"  # the first processor's
    # flags are whole words: avx2 present, avx512f absent (only the second processor lists it), amx_tile present
    assert rec["cpu_flags"] == {"avx2": True, "avx512f": False, "amx_tile": True}
    assert rec["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["torch"] == torch.__version__
    assert isinstance(rec["cpus"], int) and rec["cpus"] >= 1
    assert isinstance(rec["python"], str) and isinstance(rec["platform"], str)


def test_machine_record_has_the_threads_of_the_moment(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert machine_record()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_machine_record_without_cpuinfo_says_the_flags_are_unknown(tmp_path):
    rec = machine_record(tmp_path / "absent")
    assert rec["cpu_flags"] == {f: None for f in CPU_FLAGS}  # not "absent": nobody looked
    assert rec["cpu_model"] is None or isinstance(rec["cpu_model"], str)


def test_machine_record_of_this_machine_has_every_field_typed():
    rec = machine_record()
    assert set(rec) == {
        "cpu_model",
        "cpu_flags",
        "cpu_capability",
        "cpus",
        "torch_threads",
        "torch",
        "python",
        "platform",
    }
    assert set(rec["cpu_flags"]) == {"avx2", "avx512f", "amx_tile"}
    assert all(v is None or isinstance(v, bool) for v in rec["cpu_flags"].values())
    assert isinstance(rec["cpu_capability"], str) and isinstance(rec["torch_threads"], int)
    load = load_average()
    assert len(load) == 3 and all(isinstance(x, float) and x >= 0 for x in load)


def test_summarize_gives_median_and_spread():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"n": 5, "median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0}
    even = summarize([4, 1, 3, 2])  # inclusive quartiles: linear between the sorted values
    assert (even["median"], even["q1"], even["q3"]) == (2.5, 1.75, 3.25)
    three = summarize([10.0, 30.0, 11.0])
    assert (three["median"], three["min"], three["max"], three["q1"], three["q3"]) == (11.0, 10.0, 30.0, 10.5, 20.5)


def test_summarize_of_one_repeat_and_of_none():
    assert summarize([2.5]) == {"n": 1, "median": 2.5, "min": 2.5, "max": 2.5, "q1": 2.5, "q3": 2.5}
    with pytest.raises(ValueError, match="no repeats"):
        summarize([])
