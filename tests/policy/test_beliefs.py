import copy

import pytest
import torch

from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import HFGenerator, SamplingParams
from igpo.policy.scoring import (
    BeliefQuery,
    belief_logprobs_cached,
    belief_logprobs_packed,
    belief_logprobs_reference,
)
from tests.conftest import make_tiny_llama, make_varied_llama


@pytest.mark.parametrize(
    "attn, probe",
    [("sdpa", [7, 8, 9, 10]), ("eager", [7, 8, 9, 10]), ("sdpa", [])],
    ids=["sdpa", "eager", "empty_probe"],
)
def test_packed_beliefs_match_reference(attn, probe, device):
    """`algorithm.belief_probe: ''` is a probe too: the answer right after the prefix."""
    model = make_tiny_llama(300, seed=1).to(device)
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


VOCAB = 600


@pytest.fixture(scope="module")
def varied_model(device):
    return make_varied_llama(VOCAB).to(device)


def engine_episodes(model, turns=(1, 2, 3, 3)):
    """Multi-turn episodes played through the KV-cache engine (a tool result of random ids after each turn but
    an episode's last): its caches as a rollout leaves them, and per episode its ids and belief prefixes (the
    length of each context the engine generated for)."""
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(3, VOCAB, (30,), generator=g).tolist()  # like a system prompt: one shared prefill
    ids = [shared + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 12, 1, 20)]
    prefixes = [[] for _ in ids]
    engine = CachedGenerator(model, 0)
    stops = [VOCAB + 1]
    for turn in range(max(turns)):
        active = [i for i, t in enumerate(turns) if t > turn]
        out = engine.generate([ids[i] for i in active], SamplingParams(6 + 3 * turn, temperature=0.0), stops)
        for i, gen in zip(active, out):
            prefixes[i].append(len(ids[i]))
            gen = gen[:-2] if (turn, i) == (0, 3) else gen  # a generation cut short, as a budget cut does
            ids[i] += gen
            if turn + 1 < turns[i]:
                ids[i] += torch.randint(3, VOCAB, (3 + 7 * i + turn,), generator=g).tolist()
    answers = [[[11, 12, 13], [40]], [[7]], [[300, 5], [9, 9, 9, 9], [21]], [[17, 18]]]
    return engine, [BeliefQuery(x, p, a) for x, p, a in zip(ids, prefixes, answers)]


def held_of(engine, queries):
    return [engine.held_kv(q.ids, max(q.prefixes) - 1) for q in queries]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("probe", [[7, 8, 9, 10], []], ids=["probe", "empty_probe"])
def test_cached_beliefs_match_packed_and_reference_on_engine_caches(varied_model, attn, probe):
    """Real engine caches: episodes of 1 to 3 turns (one with p_0 only), contexts of different lengths in one
    batch, several aliases of different lengths, and `algorithm.belief_probe: ''` (the prefix's last id predicts
    the first answer id)."""
    varied_model.config._attn_implementation = attn
    try:
        engine, queries = engine_episodes(varied_model)
        assert [len(q.prefixes) for q in queries] == [1, 2, 3, 3]
        held = held_of(engine, queries)
        assert all(kv is not None for kv in held)
        ref = belief_logprobs_reference(varied_model, probe, queries)
        packed = belief_logprobs_packed(varied_model, probe, queries)
        for rows in (1, 2, 4):
            cached = belief_logprobs_cached(varied_model, probe, queries, held, max_rows=rows)
            for c, p, r, q in zip(cached, packed, ref, queries):
                assert c.shape == (len(q.prefixes), len(q.answers))
                torch.testing.assert_close(c, r, atol=1e-4, rtol=0)
                torch.testing.assert_close(c, p, atol=1e-4, rtol=0)
    finally:
        varied_model.config._attn_implementation = "sdpa"


def test_cached_beliefs_fall_back_to_packed_where_no_cache_is_held(varied_model):
    engine, queries = engine_episodes(varied_model)
    held = held_of(engine, queries)
    held[1] = held[3] = None  # as from a generator that holds none
    assert HFGenerator(varied_model, 0).held_kv(queries[0].ids, 5) is None
    assert engine.held_kv(queries[0].ids[:-1] + [queries[0].ids[-1] + 1], len(queries[0].ids)) is None
    cached = belief_logprobs_cached(varied_model, [7, 8], queries, held)
    for c, r in zip(cached, belief_logprobs_reference(varied_model, [7, 8], queries)):
        torch.testing.assert_close(c, r, atol=1e-4, rtol=0)


def test_scoring_leaves_the_engine_cache_as_it_was(varied_model):
    """The stored keys/values are bit-identical after scoring, and the next call reuses them exactly as an engine
    that scored nothing does."""
    engine, queries = engine_episodes(varied_model)
    twin = CachedGenerator(varied_model, 0)
    twin._stored = copy.deepcopy(engine._stored)
    belief_logprobs_cached(varied_model, [7, 8, 9], queries, held_of(engine, queries))
    assert len(engine._stored) == len(twin._stored) == 4
    for a, b in zip(engine._stored, twin._stored):
        assert all(torch.equal(x, y) for (k, v), (k2, v2) in zip(a.kv, b.kv) for x, y in ((k, k2), (v, v2)))
    nxt = [q.ids + [5, 6, 7] for q in queries]
    params = SamplingParams(5, temperature=0.0)
    reused = engine.stats["reused_ids"]
    assert engine.generate(nxt, params, []) == twin.generate(nxt, params, [])
    assert engine.stats["reused_ids"] - reused >= sum(max(q.prefixes) for q in queries)
    for a, b in zip(engine._stored, twin._stored):
        assert all(torch.equal(x, y) for (k, v), (k2, v2) in zip(a.kv, b.kv) for x, y in ((k, k2), (v, v2)))
