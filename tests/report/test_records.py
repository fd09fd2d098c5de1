"""Trajectory records: the beliefs, IG and advantages of each turn, as the trainer computed them."""

import json

import pytest
import torch

from igpo.agent.parsing import Action
from igpo.agent.trajectory import Trajectory, Turn
from igpo.algo.rewards import information_gain
from igpo.data.loaders import QAExample
from igpo.report.records import sample_records, trajectory_record


def three_turns(beliefs=None, group=7) -> Trajectory:
    ex = QAExample("q1", "Where is the Eiffel Tower?", ["Paris", "Paris, France"], "toy")
    turns = [
        Turn(
            10,
            14,
            30,
            '<tool_call>{"name": "search", "arguments": {"query": "Eiffel"}}</tool_call>',
            Action("tool_call", name="search", arguments={"query": "Eiffel"}),
            tool_result="[1] Eiffel Tower: in Paris",
        ),
        Turn(
            30,
            33,
            50,
            '<tool_call>{"name": "lookup"}</tool_call>',
            Action("tool_call", name="lookup"),
            tool_result="unknown tool lookup",
            tool_error="unknown_tool",
        ),
        Turn(50, 55, 56, "<answer>Paris</answer>", Action("answer", answer="Paris")),
    ]
    return Trajectory(ex, group, list(range(56)), 10, turns, finish="answer", beliefs=beliefs)


def test_each_turn_carries_its_belief_and_ig_equal_to_the_belief_difference():
    logp = torch.log(torch.tensor([0.1, 0.4, 0.25]))
    rewards = torch.cat([information_gain(logp, "prob_diff"), torch.tensor([1.0])]).tolist()
    rec = trajectory_record(three_turns(logp.tolist()), rewards, [0.5, -0.2, 1.0], outcome=1.0, step=3)
    json.dumps(rec)  # JSON-able as is
    p = [rec["p0"]] + [t["belief"] for t in rec["turns"][:2]]
    assert p == pytest.approx([0.1, 0.4, 0.25])
    for k in (1, 2):
        assert rec["turns"][k - 1]["ig"] == pytest.approx(p[k] - p[k - 1])
    last = rec["turns"][2]
    assert last["ig"] is None and last["belief"] is None  # no belief is taken after the answer
    assert [t["advantage"] for t in rec["turns"]] == pytest.approx([0.5, -0.2, 1.0])
    assert [t["generated_tokens"] for t in rec["turns"]] == [4, 3, 5]
    assert rec["turns"][0]["tool"] == "search" and rec["turns"][0]["arguments"] == {"query": "Eiffel"}
    assert rec["turns"][1]["tool_error"] == "unknown_tool"
    assert (rec["answer"], rec["f1"], rec["outcome"], rec["finish"]) == ("Paris", 1.0, 1.0, "answer")
    assert (rec["step"], rec["group"], rec["golds"]) == (3, 7, ["Paris", "Paris, France"])


def test_without_beliefs_there_is_no_ig():
    rec = trajectory_record(three_turns(), [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], outcome=1.0, step=0)
    assert rec["p0"] is None and all(t["ig"] is None and t["belief"] is None for t in rec["turns"])


def test_sample_records_keeps_the_first_n():
    trajs = [three_turns(group=g) for g in (0, 0, 1)]
    rewards, adv = torch.zeros(3, 3), torch.zeros(3, 3)
    assert [r["group"] for r in sample_records(trajs, rewards, adv, [0.0] * 3, 5, n=2)] == [0, 0]
    assert sample_records(trajs, rewards, adv, [0.0] * 3, 5, n=0) == []
