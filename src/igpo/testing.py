"""Tiny stand-ins built in code, with nothing to download: a byte-level BPE tokenizer trained on toy facts, tiny
random Llama models, a word-overlap retriever over those facts, and scripted generations that reach every branch
of an episode. The test suite's fixtures (tests/conftest.py) and `benchmarks/gpu_check.py` are built from them.
"""

from __future__ import annotations

import random

import torch

from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import Generator
from igpo.retrieval.base import Hit, Retriever

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# passage id, title, text
FACTS = [
    ("p1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    ("p2", "France", "France - Government - Capital: Paris. The anthem of France is La Marseillaise."),
    ("p3", "Colosseum", "The Colosseum is an ancient amphitheatre in Rome, Italy."),
    ("p4", "Italy", "Italy - Government - Capital: Rome. The anthem of Italy is Il Canto degli Italiani."),
    ("p5", "Big Ben", "Big Ben is the nickname of the Great Bell of the clock at Westminster, London."),
    ("p6", "United Kingdom", "United Kingdom - Government - Capital: London. Anthem: God Save the King."),
]
# question id, text, answers
QUESTIONS = [
    ("q1", "What is the capital of the country where the Eiffel Tower is?", ["Paris"]),
    ("q2", "What is the anthem of the country where the Colosseum is?", ["Il Canto degli Italiani", "Inno di Mameli"]),
    ("q3", "In which city is Big Ben?", ["London", "London, England"]),
    ("q4", "What is the capital of Italy?", ["Rome", "Roma"]),
]

SEARCH = '<tool_call>{{"name": "search", "arguments": {{"query": "{}"}}}}</tool_call>'
# Per question of `QUESTIONS`, per turn, the generations a `ScriptedGenerator` chooses from: searches, answers,
# a call to an unknown tool, an unclosed call and text without tags.
SCRIPTS = {
    QUESTIONS[0][1]: [
        [SEARCH.format("Eiffel Tower"), SEARCH.format("capital"), "<answer>Rome</answer>"],
        [SEARCH.format("France capital"), "<answer>Paris</answer>", '<tool_call>{"name": "search"'],
        ["<answer>Paris</answer>", "I do not know"],
    ],
    QUESTIONS[1][1]: [
        [SEARCH.format("Colosseum"), '<tool_call>{"name": "lookup", "arguments": {}}</tool_call>'],
        ["<answer>Il Canto degli Italiani</answer>", SEARCH.format("Italy anthem")],
        ["<answer>Inno di Mameli</answer>"],
    ],
    QUESTIONS[2][1]: [["<answer>London</answer>", SEARCH.format("Big Ben")], ["<answer>Paris</answer>"]],
    QUESTIONS[3][1]: [[SEARCH.format("Italy capital"), "no idea"], ["<answer>Roma</answer>", "<answer>Milan</answer>"]],
}


def _training_text() -> list[str]:
    text = [t for _, title, t in FACTS] + [q for _, q, _ in QUESTIONS]
    text += [
        '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>',
        "<answer>Paris</answer> <tool_response> Now there's enough information to answer </think>",
        "search results passages question answer the of in is a tool call",
    ]
    return text * 3


def make_tokenizer():
    """A byte-level BPE tokenizer (~600 tokens) trained on the facts and questions, with ChatML control tokens and
    a tool-less chat template (a `transformers.PreTrainedTokenizerFast`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_training_text(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    return tok


def make_tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A random Llama (fp32, sdpa attention) of `layers` layers of width `hidden`, 4 heads, 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    return model


class WordRetriever(Retriever):
    """Passages ranked by how many of the query's lowercase words their title and text hold (ties: corpus order);
    in memory, without an index library."""

    def __init__(self, passages: list[tuple[str, str, str]]):
        self.passages = passages

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        out = []
        for q in queries:
            words = set(q.lower().split())
            scored = [(sum(w in f"{t} {x}".lower() for w in words), k) for k, (_, t, x) in enumerate(self.passages)]
            best = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))[:topk]
            out.append([Hit(self.passages[k][0], self.passages[k][1], self.passages[k][2], float(s)) for s, k in best])
        return out


class ScriptedGenerator(Generator):
    """Per question, a list of turns; each turn a list of alternative generations (chosen at random).

    The turn number is the number of tool messages already in the context. Generations are encoded once and
    returned as ids ending with the end-of-turn token, exactly like a sampler would return them. Choices come
    from each context's seed when `params.seeds` is given (as the trainer passes them), else from one shared
    stream, or with `seed=None` from torch's global RNG, like a sampler.
    """

    def __init__(self, tokenizer, fmt, scripts: dict[str, list[list[str]]], seed: int | None = 0):
        self.tok, self.fmt, self.scripts = tokenizer, fmt, scripts
        self.rng = random.Random(seed) if seed is not None else None
        self.calls = 0

    def generate(self, contexts, params, stop_ids):
        self.calls += 1
        out = []
        pre = self.fmt.tool_pre_ids
        for i, ctx in enumerate(contexts):
            text = self.tok.decode(ctx)
            question = next(q for q in self.scripts if q in text)
            turn = sum(1 for k in range(len(ctx) - len(pre) + 1) if ctx[k : k + len(pre)] == pre)
            options = self.scripts[question][min(turn, len(self.scripts[question]) - 1)]
            seeds = getattr(params, "seeds", None)
            if seeds is not None:  # the choice depends on the context's seed alone
                pick = random.Random(seeds[i]).randrange(len(options))
            else:
                pick = self.rng.randrange(len(options)) if self.rng else int(torch.randint(len(options), ()))
            ids = self.fmt.encode_text(options[pick]) + [self.fmt.eot_ids[0]]
            out.append(ids[: params.max_new_tokens])
        return out


class ScriptedOverEngine(CachedGenerator):
    """The KV-cache engine run over every context, so that it holds real caches of the episodes' contexts (as
    after a real rollout), returning the script's generations instead of its own: a random model that searches."""

    def __init__(self, model, pad_id: int, script: ScriptedGenerator):
        super().__init__(model, pad_id)
        self.script = script

    def generate(self, contexts, params, stop_ids):
        super().generate(contexts, params, stop_ids)
        return self.script.generate(contexts, params, stop_ids)
