import pytest

from igpo.agent.generators import Generation, HFGenerator, SamplingParams
from igpo.agent.rollout import rollout
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.agent.tools import SearchTool, Toolbox
from igpo.data.loaders import Passage, QAExample
from igpo.retrieval.bm25 import BM25Retriever
from tests.conftest import FACTS
from tests.scripted import ScriptedGenerator

Q = "What is the capital of the country where the Eiffel Tower is?"
SEARCH = '<tool_call>{"name": "search", "arguments": {"query": "Eiffel Tower"}}</tool_call>'


@pytest.fixture
def setup(tokenizer):
    box = Toolbox([SearchTool(BM25Retriever([Passage(i, t, x) for i, t, x in FACTS]), topk=2)])
    fmt = ChatFormat(tokenizer, DEFAULT_SYSTEM_PROMPT, box.schemas(), "\nNow answer\n<answer>\n")
    return fmt, box


def run(fmt, box, script, max_turns=4, max_context=4096, max_new=64, n=1):
    gen = ScriptedGenerator(fmt.tokenizer, fmt, {Q: script})
    ex = QAExample("q", Q, ["Paris"])
    return rollout([ex] * n, [0] * n, gen, fmt, box, SamplingParams(max_new), max_turns, max_context)


def test_multi_turn_trajectory_is_token_exact(setup, tokenizer):
    fmt, box = setup
    (tr,) = run(fmt, box, [[SEARCH], ["<think>it is in Paris</think><answer>Paris</answer>"]])
    assert tr.finish == "answer" and tr.answer == "Paris" and tr.num_turns == 2
    t1, t2 = tr.turns
    eot = fmt.eot_ids[0]
    # The sampled ids sit unchanged in the trajectory, the tool message right after the close of turn 1.
    assert tr.ids[t1.gen_start : t1.gen_end] == fmt.encode_text(SEARCH) + [eot]
    obs_start = t1.gen_end + len(fmt.close_generation(tr.ids[t1.gen_start : t1.gen_end]))
    assert tr.ids[obs_start : t1.end] == fmt.tool_message_ids(t1.tool_result)
    assert tr.ids[slice(*t1.result_span)] == fmt.encode_text(t1.tool_result) and t2.result_span is None
    # What the rollout wrote from the template: around the question, around the tool result, after the answer.
    q0, q1 = tr.question_span
    assert tr.ids[q0:q1] == fmt.encode_text(Q)
    assert tr.rollout_spans() == [
        (0, q0),
        (q1, tr.prompt_len),
        (t1.gen_end, t1.result_span[0]),
        (t1.result_span[1], t1.end),
        (t2.gen_end, t2.end),
    ]
    assert "Eiffel Tower" in t1.tool_result and t2.gen_start == t1.end
    mask, turns = tr.loss_mask(), tr.token_turns()
    assert sum(mask) == (t1.gen_end - t1.gen_start) + (t2.gen_end - t2.gen_start)
    assert not any(mask[obs_start : t1.end])  # tool results are never trained on
    assert (
        set(turns[: tr.prompt_len]) == {-1}
        and set(turns[t1.gen_start : t1.end]) == {0}
        and set(turns[t2.gen_start :]) == {1}
    )
    assert tr.belief_prefixes() == [tr.prompt_len, t1.end]
    assert tr.ids[-1] == fmt.eot_ids[-1]


class Recording(ScriptedGenerator):
    """Declares that it records sampling log-probs: each id comes with -(its position in the generation + 1)."""

    records_logprobs = True

    def generate(self, contexts, params, stop_ids):
        return [
            Generation(ids, [-(k + 1.0) for k in range(len(ids))])
            for ids in super().generate(contexts, params, stop_ids)
        ]


def test_sampling_logprobs_are_kept_per_turn_when_the_generator_records_them(setup):
    fmt, box = setup
    script = {Q: [[SEARCH], ["<answer>Paris</answer>"]]}
    ex = QAExample("q", Q, ["Paris"])
    (tr,) = rollout([ex], [0], Recording(fmt.tokenizer, fmt, script), fmt, box, SamplingParams(64), 4, 4096)
    assert tr.num_turns == 2
    for t in tr.turns:
        assert t.logprobs == [-(k + 1.0) for k in range(t.gen_end - t.gen_start)]
    # cut by the turn's token budget: the log-probs are cut with the ids
    (tr,) = rollout(
        [ex], [0], Recording(fmt.tokenizer, fmt, script), fmt, box, SamplingParams(64), 4, len(fmt.prompt_ids(Q)) + 5
    )
    assert tr.turns[0].logprobs == [-1.0, -2.0, -3.0, -4.0, -5.0]
    (tr,) = rollout([ex], [0], ScriptedGenerator(fmt.tokenizer, fmt, script), fmt, box, SamplingParams(64), 4, 4096)
    assert all(t.logprobs is None for t in tr.turns)


def test_limits_end_episodes_without_crashing(setup):
    fmt, box = setup
    (tr,) = run(fmt, box, [[SEARCH]], max_turns=3)
    assert tr.finish == "max_turns" and tr.num_turns == 3 and tr.turns[-1].tool_result is None
    (tr,) = run(fmt, box, [["I think it is Paris."]])
    assert tr.finish == "format_error" and tr.num_turns == 1
    prompt = len(fmt.prompt_ids(Q))
    (tr,) = run(fmt, box, [[SEARCH]], max_context=prompt + 40)
    assert tr.finish == "max_context" and len(tr.ids) <= prompt + 40
    (tr,) = run(fmt, box, [[SEARCH]], max_context=prompt)
    assert tr.finish == "max_context" and tr.num_turns == 0
    # A generation is cut to the room left: an answer cut before it closes is a format error.
    (tr,) = run(fmt, box, [["<answer>Paris</answer>"]], max_context=prompt + 3)
    assert tr.finish == "format_error" and len(tr.ids) == prompt + 3 and tr.answer is None


def test_generation_budget_is_cut_per_episode(setup):
    fmt, box = setup
    (tr,) = run(fmt, box, [["<answer>Paris</answer>"]], max_new=3)
    assert tr.turns[0].gen_end - tr.turns[0].gen_start == 3 and tr.finish == "format_error"


def test_hf_generator_batches_left_padded_contexts(tokenizer):
    from tests.conftest import make_tiny_llama

    model = make_tiny_llama(len(tokenizer))
    gen = HFGenerator(model, tokenizer.pad_token_id)
    ctx = [[5, 6, 7, 8, 9], [10, 11]]
    greedy = SamplingParams(6, temperature=0.0)
    batched = gen.generate(ctx, greedy, [2])
    alone = [gen.generate([c], greedy, [2])[0] for c in ctx]
    assert batched == alone  # left padding does not change what a context generates
    assert all(1 <= len(o) <= 6 for o in batched)
