"""`make test` runs the `vllm`-marked tests in the second environment from the files Makefile's VLLM_TESTS lists:
a marked test in any other file would never run there (and is excluded from the first environment)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_vllm_marked_test_file_is_run_by_make_test():
    logical = (ROOT / "Makefile").read_text().replace("\\\n", " ")  # make's continuation lines joined
    listed = re.search(r"^VLLM_TESTS := (.+)$", logical, re.M)
    assert listed, "Makefile: VLLM_TESTS is not defined"
    marked = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if p.name != Path(__file__).name
        and re.search(r"^\s*(pytestmark = |@)pytest\.mark\.vllm\b", p.read_text(), re.M)
    }
    assert marked, "no test file carries pytest.mark.vllm"
    assert marked <= set(listed.group(1).split()), f"vllm-marked files missing from VLLM_TESTS: {marked}"
