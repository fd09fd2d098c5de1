"""The probe-leak invariant looks where a probe could enter a context through our code, and only there."""

import pytest

from igpo.agent.generators import SamplingParams
from igpo.agent.rollout import rollout
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.agent.tools import SearchTool, Toolbox, ToolResult
from igpo.config import AlgorithmConfig
from igpo.data.loaders import Passage, QAExample
from igpo.retrieval.bm25 import BM25Retriever
from igpo.train.invariants import InvariantError, check_no_probe_leak
from tests.conftest import FACTS
from tests.scripted import ScriptedGenerator

PROBE = AlgorithmConfig().belief_probe
Q = "In which city is Big Ben?"
SEARCH = '<tool_call>{"name": "search", "arguments": {"query": "Big Ben"}}</tool_call>'
# The policy may write the probe's words itself: they are its own text, not the probe.
POLICY_PROBE = f"{PROBE}London</answer>"


class EchoProbe(SearchTool):
    """A search tool whose results hold the probe text (a page could)."""

    def run_batch(self, arguments):
        return [ToolResult(f"Big Ben is in London.{PROBE}London") for _ in arguments]


def episode(tokenizer, system_prompt=DEFAULT_SYSTEM_PROMPT, stale_probe=False):
    box = Toolbox([EchoProbe(BM25Retriever([Passage(*f) for f in FACTS]))])
    fmt = ChatFormat(tokenizer, system_prompt, box.schemas(), PROBE)
    gen = ScriptedGenerator(tokenizer, fmt, {Q: [[SEARCH], [POLICY_PROBE]]})
    if stale_probe:  # a probe buffer left behind in what the rollout appends after a tool result
        fmt.tool_post_ids = fmt.belief_probe_ids + fmt.answer_ids("London") + fmt.tool_post_ids
    (tr,) = rollout([QAExample("q3", Q, ["London"])], [0], gen, fmt, box, SamplingParams(64), 3, 4096)
    assert tr.finish == "answer" and tr.num_turns == 2
    return tr, fmt


def check(tr, fmt, tokenizer):
    check_no_probe_leak(tr, tokenizer, PROBE, fmt.belief_probe_ids, [fmt.answer_ids("London")], "rollout 0")


def test_the_policys_text_and_tool_results_are_not_probes(tokenizer):
    tr, fmt = episode(tokenizer)
    text = tokenizer.decode(tr.ids)
    assert " ".join(text.split()).count(" ".join(f"{PROBE}London".split())) == 2  # in the result and the answer
    check(tr, fmt, tokenizer)


@pytest.mark.parametrize("where", ["template after a tool result", "system prompt"])
def test_a_probe_in_what_the_rollout_writes_is_a_leak(tokenizer, where):
    if where == "system prompt":
        tr, fmt = episode(tokenizer, system_prompt=f"{DEFAULT_SYSTEM_PROMPT}{PROBE}London")
    else:
        tr, fmt = episode(tokenizer, stale_probe=True)
    with pytest.raises(InvariantError, match="rollout 0: the belief probe .*appears in the policy context"):
        check(tr, fmt, tokenizer)


def test_a_question_that_holds_its_answer_is_no_leak_even_with_an_empty_probe(tokenizer):
    """With `algorithm.belief_probe: ''` the probed text is the bare answer, which a (comparison) question may hold."""
    box = Toolbox([])
    fmt = ChatFormat(tokenizer, DEFAULT_SYSTEM_PROMPT, box.schemas(), "")
    question = "Which is older, Big Ben or the Colosseum?"
    gen = ScriptedGenerator(tokenizer, fmt, {question: [["<answer>Colosseum</answer>"]]})
    (tr,) = rollout([QAExample("q", question, ["Colosseum"])], [0], gen, fmt, box, SamplingParams(64), 3, 4096)
    assert fmt.belief_probe_ids == [] and tr.answer == "Colosseum"
    assert tr.ids[slice(*tr.question_span)] == fmt.encode_text(question)
    check_no_probe_leak(tr, tokenizer, "", [], [fmt.answer_ids("Colosseum")], "rollout 0")
