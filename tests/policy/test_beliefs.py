import pytest
import torch

from igpo.policy.scoring import BeliefQuery, belief_logprobs_packed, belief_logprobs_reference
from tests.conftest import make_tiny_llama


@pytest.mark.parametrize(
    "attn, probe",
    [("sdpa", [7, 8, 9, 10]), ("eager", [7, 8, 9, 10]), ("sdpa", [])],
    ids=["sdpa", "eager", "empty_probe"],
)
def test_packed_beliefs_match_reference(attn, probe):
    """`algorithm.belief_probe: ''` is a probe too: the answer right after the prefix."""
    model = make_tiny_llama(300, seed=1)
    model.config._attn_implementation = attn
    model.eval()
    g = torch.Generator().manual_seed(0)
    queries = []
    for n, (length, prefixes, n_alias) in enumerate(
        [(40, [10, 17, 30], 3), (25, [5, 25], 1), (60, [12, 20, 41, 55], 2)]
    ):
        ids = torch.randint(3, 300, (length,), generator=g).tolist()
        answers = [torch.randint(3, 300, (1 + (k + n) % 4,), generator=g).tolist() for k in range(n_alias)]
        queries.append(BeliefQuery(ids, prefixes, answers))
    ref = belief_logprobs_reference(model, probe, queries)
    for rows in (1, 2, 4):
        fast = belief_logprobs_packed(model, probe, queries, max_rows=rows)
        for a, b, q in zip(fast, ref, queries):
            assert a.shape == (len(q.prefixes), len(q.answers))
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_beliefs_depend_on_the_prefix():
    model = make_tiny_llama(300, seed=2).eval()
    ids = list(range(3, 60))
    (res,) = belief_logprobs_packed(model, [5, 6], [BeliefQuery(ids, [5, 50], [[11, 12]])])
    assert not torch.isclose(res[0, 0], res[1, 0])
