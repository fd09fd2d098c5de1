"""The KV-cache rollout engine generates what `model.generate` over the full context generates."""

import copy

import pytest
import torch
from transformers import GenerationConfig

from igpo.agent.build import make_generator
from igpo.agent.engine import CachedGenerator, cache_kwarg, returned_cache
from igpo.agent.generators import HFGenerator, SamplingParams
from igpo.agent.rollout import rollout
from igpo.agent.template import DEFAULT_SYSTEM_PROMPT, ChatFormat
from igpo.agent.tools import Toolbox
from igpo.config import Config
from igpo.data.loaders import QAExample
from igpo.seeding import turn_seed
from tests.conftest import make_varied_llama

VOCAB = 600


@pytest.fixture(scope="module")
def model():
    return make_varied_llama(VOCAB)


def random_ids(g, n):
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


def contexts(g):
    shared = random_ids(g, 30)  # like a system prompt
    return [shared + random_ids(g, n) for n in (5, 12, 1, 20)]


def turn_params(seeded: bool, turn: int) -> SamplingParams:
    if not seeded:
        return SamplingParams(12, temperature=0.0)
    # Per-episode streams, as the trainer asks for them: seeds 100..103, one derived seed per turn.
    return SamplingParams(12, temperature=1.3, top_p=0.95, seeds=[turn_seed(100 + i, turn) for i in range(4)])


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded_sampling"])
def test_matches_generate_over_the_full_context_across_turns(model, seeded):
    g = torch.Generator().manual_seed(1)
    ctx = contexts(g)
    hf, engine = HFGenerator(model, 0), CachedGenerator(model, 0)
    dry = hf.generate(ctx, turn_params(seeded, 0), [VOCAB + 1])
    stops = [dry[0][3], dry[1][6], dry[2][9]]  # tokens the model does emit: rows stop at different steps
    ref, ours = [list(c) for c in ctx], [list(c) for c in ctx]
    lengths = set()
    for turn in range(4):
        params = turn_params(seeded, turn)
        a, b = hf.generate(ref, params, stops), engine.generate(ours, params, stops)
        assert a == b, f"turn {turn}"
        lengths.update(len(x) for x in a)
        for i in range(len(ctx)):
            gen = a[i][:-2] if (turn, i) == (1, 3) else a[i]  # a generation cut short, as a budget cut does
            result = random_ids(g, 3 + 7 * i + turn)  # tool results of different lengths
            ref[i] += gen + result
            ours[i] += gen + result
    assert len(lengths) > 2  # episodes stopped at different steps, so rows left the batch at different times
    # Every turn after the first prefilled only the new ids: far fewer than the contexts' total length.
    assert engine.stats["reused_ids"] > engine.stats["computed_ids"]
    if seeded:  # the streams really sampled: not the greedy continuation
        assert dry != hf.generate(ctx, turn_params(False, 0), [VOCAB + 1])


def test_identical_prompts_share_one_prefill_and_match(model):
    g = torch.Generator().manual_seed(2)
    prompt = random_ids(g, 40)
    params = SamplingParams(8, temperature=0.0)
    engine = CachedGenerator(model, 0)
    out = engine.generate([prompt] * 3 + [prompt[:35]], params, [])
    assert out == HFGenerator(model, 0).generate([prompt] * 3 + [prompt[:35]], params, [])
    # The 35 shared ids were computed once; each row then fed the rest of its prompt and 7 decoded ids.
    assert engine.stats["computed_ids"] == 34 + (6 * 3 + 1) + 7 * 4


def test_sampling_matches_generate_and_is_reproducible(model):
    g = torch.Generator().manual_seed(3)
    ctx = contexts(g)
    engine = CachedGenerator(model, 0)
    params = SamplingParams(10, temperature=0.7, top_p=0.9)
    for c in ctx[:2]:  # one row: the same random draws as `model.generate`, so the same tokens
        torch.manual_seed(11)
        a = HFGenerator(model, 0).generate([c], params, [])
        torch.manual_seed(11)
        assert engine.generate([c], params, []) == a
    runs = []
    for seed in (5, 5, 6):
        engine.release()
        torch.manual_seed(seed)
        runs.append(engine.generate(ctx, params, []))
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.fixture(scope="module")
def model_with_generation_defaults(model):
    """The same weights, shipped with a generation_config whose every entry would change what is sampled (as
    Qwen2.5-Instruct's repetition_penalty 1.05 does)."""
    m = copy.deepcopy(model)
    m.generation_config = GenerationConfig(
        repetition_penalty=1.05,
        no_repeat_ngram_size=2,
        suppress_tokens=[5, 6],
        bad_words_ids=[[7]],
        begin_suppress_tokens=[8],
        min_new_tokens=6,
        top_k=3,
        top_p=0.5,
        temperature=0.3,
        do_sample=True,
    )
    return m


@pytest.mark.parametrize("mode", ["greedy", "seeded", "unseeded"])
def test_the_models_generation_config_changes_nothing(model, model_with_generation_defaults, mode):
    """Both engines sample the policy the loss scores (temperature and top-p only), whatever the model's
    generation_config holds: the same ids as the same weights without it."""
    g = torch.Generator().manual_seed(4)
    ctx = contexts(g)
    params = {
        "greedy": SamplingParams(12, temperature=0.0),
        "seeded": SamplingParams(12, temperature=1.3, top_p=0.95, seeds=[5, 6, 7, 8]),
        "unseeded": SamplingParams(12, temperature=1.3, top_p=0.95),
    }[mode]
    rows = ctx[:1] if mode == "unseeded" else ctx  # one row: HF's sampler and ours draw the same random numbers

    def run(engine, m):
        torch.manual_seed(11)
        return engine(m, 0).generate(rows, params, stops)

    stops = [VOCAB + 1]
    dry = run(HFGenerator, model)
    stops = [dry[0][2]]  # a token the model does emit early: min_new_tokens would hold it back
    want = run(HFGenerator, model)
    assert want == run(CachedGenerator, model)
    assert run(HFGenerator, model_with_generation_defaults) == want
    assert run(CachedGenerator, model_with_generation_defaults) == want
    assert model_with_generation_defaults.generation_config.repetition_penalty == 1.05  # left as it was


def test_rollout_releases_caches_and_engine_is_selectable(model, tokenizer):
    fmt = ChatFormat(tokenizer, DEFAULT_SYSTEM_PROMPT, [], "\n<answer>\n")
    engine = make_generator(Config.model_validate({"rollout": {"engine": "cached"}}), model, 0)
    hf = make_generator(Config.model_validate({"rollout": {"engine": "hf"}}), model, 0)
    assert isinstance(hf, HFGenerator) and isinstance(engine, CachedGenerator)
    ex = QAExample("q", "What is the capital of Italy?", ["Rome"])
    play = lambda **kw: rollout(  # noqa: E731
        [ex] * 2, [0, 0], engine, fmt, Toolbox([]), SamplingParams(6, temperature=0.0), 2, 4096, **kw
    )
    trajs = play()
    assert len(trajs) == 2 and trajs[0].ids == trajs[1].ids
    assert engine._stored == []  # no keys of these weights outlive the rollout

    class Watched(CachedGenerator):
        def generate(self, contexts, params, stop_ids):
            found.append(len(self._stored))  # caches held when a call starts
            return super().generate(contexts, params, stop_ids)

    # release=False: the caller reads the caches (the beliefs) and releases them; a new rollout drops them first.
    engine, found = Watched(model, 0), []  # `play` plays the new engine
    trajs = play(release=False)
    assert engine.held_kv(trajs[0].ids, trajs[0].prompt_len) is not None and engine._stored
    found.clear()
    play()
    assert found[0] == 0 and engine._stored == []


def test_growing_cache_layer_holds_what_concatenation_holds():
    """The engine's preallocated layer: appends (past its capacity too), crop, dropping rows and repeating them
    give the keys/values `torch.cat` and indexing give, and the buffer is written in place until it is full."""
    from igpo.agent.engine import _GrowingLayer

    g = torch.Generator().manual_seed(0)
    kv = lambda n, b=3: (torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g))  # noqa: E731
    layer, ref_k, ref_v = _GrowingLayer(capacity=6), *kv(0)
    for n in (4, 1, 1, 3, 1):  # a prefill, then steps; 10 columns > capacity 6: the buffer doubles once, then grows
        k, v = kv(n)
        ref_k, ref_v = torch.cat([ref_k, k], 2), torch.cat([ref_v, v], 2)
        buf = layer._buf_k if layer.is_initialized else None
        out_k, out_v = layer.update(k, v)
        assert torch.equal(out_k, ref_k) and torch.equal(out_v, ref_v) and layer.get_seq_length() == ref_k.shape[2]
        assert out_k.data_ptr() == layer._buf_k.data_ptr()  # a view of the buffer, not a copy
        if buf is not None and ref_k.shape[2] <= 6:
            assert layer._buf_k is buf  # written in place
    assert layer.capacity == 12
    layer.crop(-2)
    layer.batch_select_indices(torch.tensor([2, 0]))
    k, v = kv(1, b=2)
    out_k, out_v = layer.update(k, v)
    assert torch.equal(out_k, torch.cat([ref_k[[2, 0], :, :-2], k], 2))
    assert torch.equal(out_v, torch.cat([ref_v[[2, 0], :, :-2], v], 2))
    layer.batch_repeat_interleave(2)  # DynamicLayer's: new tensors, which the next update takes into a buffer
    k, v = kv(1, b=4)
    want = torch.cat([out_k.repeat_interleave(2, 0), k], 2)
    assert torch.equal(layer.update(k, v)[0], want) and layer._buf_k.data_ptr() == layer.keys.data_ptr()


def test_growing_cache_layer_holding_rows_right_aligned_with_zero_holes():
    from igpo.agent.engine import _GrowingLayer

    a, b = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
    layer = _GrowingLayer.holding(8, [(a, a + 1), None, (b, b + 1)], width=5)
    assert layer.get_seq_length() == 5 and layer.capacity == 8
    assert torch.equal(layer.keys[0, :, 2:], a[0]) and torch.equal(layer.values[0, :, 2:], a[0] + 1)
    assert torch.equal(layer.keys[2], b[0]) and torch.equal(layer.values[2], b[0] + 1)
    assert not layer.keys[0, :, :2].any() and not layer.keys[1].any() and not layer.values[1].any()


def test_an_ended_episodes_cache_is_held_until_release(model):
    """After a call, the cache of a context that no context of a later call extends (an episode that ended) stays
    held, so that every episode's last context can be read back (`held_kv`); an extended one is dropped."""
    g = torch.Generator().manual_seed(6)
    ctx = contexts(g)[:3]
    engine = CachedGenerator(model, 0)
    params = SamplingParams(5, temperature=0.0)
    out = engine.generate(ctx, params, [])
    nxt = [ctx[i] + out[i] + random_ids(g, 4) for i in (0, 1)]  # episode 2 ended after one turn
    engine.generate(nxt, params, [])
    assert sorted(s.context_len for s in engine._stored) == sorted([len(ctx[2])] + [len(c) for c in nxt])
    for c in [ctx[2]] + nxt:
        kv = engine.held_kv(c + [1, 2], len(c))
        assert kv is not None and kv[0][0].shape[2] == len(c)
        # The keys a forward over the context alone computes.
        want = model(input_ids=torch.tensor([c]), use_cache=True)
        want_k = returned_cache(want).layers[0].keys
        torch.testing.assert_close(kv[0][0], want_k, atol=1e-4, rtol=0)
    assert engine.held_kv(ctx[0], len(ctx[0])) is not None  # covered by the cache of its continuation
    assert engine.held_kv(ctx[0][:-1] + [ctx[0][-1] + 1], len(ctx[0])) is None  # other ids: nothing held
    engine.release()
    assert engine.held_kv(nxt[0], len(nxt[0])) is None


def test_cache_kwarg_of_a_lora_model_is_its_base_models():
    """A LoRA adapter's forward takes **kwargs: the cache argument's name comes from the model under it (else a
    LoRA rollout passes the deprecated `past_key_values` and transformers warns at every forward)."""
    from igpo.config import ModelConfig
    from igpo.policy.loading import apply_lora, is_lora

    base = make_varied_llama(VOCAB)
    lora = apply_lora(copy.deepcopy(base), ModelConfig.model_validate({"lora": {"enabled": True, "r": 4}}))
    assert is_lora(lora) and cache_kwarg(lora) == cache_kwarg(base)
