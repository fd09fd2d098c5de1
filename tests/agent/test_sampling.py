"""Per-row seeded sampling (SeededSampler): exact samples of the policy, independent of the rest of the batch."""

import torch

from igpo.agent.generators import HFGenerator, SamplingParams, SeededSampler


def test_gumbel_max_samples_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 4000
    sampler = SeededSampler(range(n), temperature=0.7, top_p=1.0)
    picks = sampler(None, logits.expand(n, -1).clone()).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    want = torch.softmax(logits / 0.7, -1)
    # binomial standard error ≤ 0.008 at n = 4000: 4 sigma
    assert (freq - want).abs().max() < 0.032


def test_top_p_tokens_outside_the_nucleus_are_never_drawn():
    logits = torch.tensor([3.0, 2.9, -2.0, -3.0])  # the first two hold > 97% of the mass
    picks = SeededSampler(range(2000), temperature=1.0, top_p=0.9)(None, logits.expand(2000, -1).clone()).argmax(-1)
    assert set(picks.tolist()) == {0, 1}


def test_a_row_samples_the_same_tokens_in_any_batch(tiny_model, tokenizer):
    """Row streams are keyed by seed: alone, or padded next to a longer context, the row draws the same ids."""
    gen = HFGenerator(tiny_model, tokenizer.pad_token_id)
    a = tokenizer.encode("What is the capital of Italy?")
    b = tokenizer.encode("The Colosseum is an ancient amphitheatre in Rome, Italy. In which city is Big Ben?")
    params = SamplingParams(12, temperature=1.0, seeds=[7])
    alone = gen.generate([a], params, stop_ids=[2])
    batched = gen.generate([b, a], SamplingParams(12, temperature=1.0, seeds=[3, 7]), stop_ids=[2])
    assert batched[1] == alone[0]
    other_seed = gen.generate([a], SamplingParams(12, temperature=1.0, seeds=[8]), stop_ids=[2])
    assert other_seed != alone  # another stream: a near-uniform random model does not repeat 12 draws
