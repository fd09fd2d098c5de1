import torch

from igpo.policy.scoring import token_logprobs
from tests.conftest import make_tiny_llama


def naive(model, ids, mask):
    """Log-probs and entropies from the full logits of every position."""
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], dim=-1)
    lp = torch.nn.functional.pad(logp.gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0)) * mask
    ent = torch.nn.functional.pad(-(logp.exp() * logp).sum(-1), (1, 0)) * mask
    return lp, ent


def test_token_logprobs_match_full_logits_in_value_and_gradient(device):
    model = make_tiny_llama(300, seed=4).to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 6:] = 0
    ids, mask = ids.to(device), mask.to(device)
    ref_lp, ref_ent = naive(model, ids, mask)
    start = 4
    lp, ent = token_logprobs(model, ids, mask, start=start, with_entropy=True, entropy_grad=True)
    assert lp.shape == ent.shape == ids.shape
    assert (lp[:, :start] == 0).all() and (lp[mask == 0] == 0).all()
    torch.testing.assert_close(lp[:, start:], ref_lp[:, start:], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[:, start:], ref_ent[:, start:], atol=1e-5, rtol=0)
    # The gradient of the scored tokens' terms equals the full computation's, restricted to them.
    (ref_lp[:, start:].sum() + ref_ent[:, start:].sum()).backward()
    ref_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp, ent = token_logprobs(model, ids, mask, start=start, with_entropy=True, entropy_grad=True)
    (lp.sum() + ent.sum()).backward()
    for p, want in zip(model.parameters(), ref_grad):
        torch.testing.assert_close(p.grad, want, atol=1e-5, rtol=1e-4)
    # Without entropy_grad the entropy is a statistic only.
    _, ent = token_logprobs(model, ids, mask, start=start, with_entropy=True)
    assert not ent.requires_grad


def test_token_logprobs_at_a_sampling_temperature_are_those_of_the_tempered_distribution(device):
    model = make_tiny_llama(300, seed=5).to(device)
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        want = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        lp, _ = token_logprobs(model, ids, mask, start=1, temperature=0.7)
        plain, _ = token_logprobs(model, ids, mask, start=1)
    torch.testing.assert_close(lp[:, 1:], want, atol=1e-5, rtol=0)
    assert (lp - plain).abs().max() > 1e-3  # the temperature really changes what is scored


def test_scoring_only_the_masked_positions_agrees_with_the_reference_in_value_and_gradient(device):
    """The fast path (LM head on the policy's tokens only) against the reference (every position from `start`)."""
    model = make_tiny_llama(300, seed=6).to(device)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 300, (3, 14), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 10:] = 0
    attn[2, 7:] = 0
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[0, [4, 5, 9, 13]] = True  # two "turns" with a "tool result" between them
    score[1, [3, 6, 7, 11]] = True  # position 11 is padding: never scored
    score[2, 0] = True  # nothing predicts the first token: never scored
    score[2, 5] = True
    ids, attn, score = ids.to(device), attn.to(device), score.to(device)
    for temperature in (1.0, 0.7):
        model.zero_grad()
        ref_lp, ref_ent = token_logprobs(
            model, ids, attn, start=1, with_entropy=True, entropy_grad=True, temperature=temperature
        )
        keep = score & attn.bool()
        keep[:, 0] = False
        ((ref_lp * keep).sum() + (ref_ent * keep).sum()).backward()
        ref_grad = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        lp, ent = token_logprobs(
            model, ids, attn, with_entropy=True, entropy_grad=True, temperature=temperature, score_mask=score
        )
        assert lp.shape == ent.shape == ids.shape
        torch.testing.assert_close(lp[keep], ref_lp[keep], atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[keep], ref_ent[keep], atol=1e-5, rtol=0)
        assert (lp[~keep] == 0).all() and (ent[~keep] == 0).all()
        (lp.sum() + ent.sum()).backward()
        for p, want in zip(model.parameters(), ref_grad):
            torch.testing.assert_close(p.grad, want, atol=1e-5, rtol=1e-4)
    # the hook is gone afterwards: a plain forward gives logits at every position again
    assert model(input_ids=ids).logits.shape[:2] == ids.shape
