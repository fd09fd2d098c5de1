"""Shared fixtures: a tokenizer trained in the test session and tiny random Llama models (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FACTS = [
    ("p1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    ("p2", "France", "France - Government - Capital: Paris. The anthem of France is La Marseillaise."),
    ("p3", "Colosseum", "The Colosseum is an ancient amphitheatre in Rome, Italy."),
    ("p4", "Italy", "Italy - Government - Capital: Rome. The anthem of Italy is Il Canto degli Italiani."),
    ("p5", "Big Ben", "Big Ben is the nickname of the Great Bell of the clock at Westminster, London."),
    ("p6", "United Kingdom", "United Kingdom - Government - Capital: London. Anthem: God Save the King."),
]
# question id, text, answers, bridge entity, oracle queries (the plan SFT demonstrations follow)
PLANS = [
    (
        "q1",
        "What is the capital of the country where the Eiffel Tower is?",
        ["Paris"],
        "France",
        ["Eiffel Tower", "France capital"],
    ),
    (
        "q2",
        "What is the capital of the country where the Colosseum is?",
        ["Rome"],
        "Italy",
        ["Colosseum", "Italy capital"],
    ),
    ("q3", "In which city is Big Ben?", ["London"], None, ["Big Ben"]),
    (
        "q4",
        "What is the anthem of the country where the Eiffel Tower is?",
        ["Marseillaise"],
        "France",
        ["Eiffel Tower", "Colosseum"],
    ),  # the second search does not find the answer: not grounded
]
QUESTIONS = [
    ("q1", "What is the capital of the country where the Eiffel Tower is?", ["Paris"]),
    ("q2", "What is the anthem of the country where the Colosseum is?", ["Il Canto degli Italiani", "Inno di Mameli"]),
    ("q3", "In which city is Big Ben?", ["London", "London, England"]),
    ("q4", "What is the capital of Italy?", ["Rome", "Roma"]),
]


def _training_text() -> list[str]:
    text = [t for _, title, t in FACTS] + [q for _, q, _ in QUESTIONS]
    text += [
        '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>',
        "<answer>Paris</answer> <tool_response> Now there's enough information to answer </think>",
        "search results passages question answer the of in is a tool call",
    ]
    return text * 3


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer (~600 tokens) with ChatML control tokens and a tool-less chat template."""
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


def make_varied_llama(vocab_size: int, seed: int = 3):
    """A tiny random Llama with large weights, in eval mode, so that greedy outputs vary instead of repeating one
    token (rows of a batch stop at different steps)."""
    m = make_tiny_llama(vocab_size, seed=seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    return m.eval()


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_llama(len(tokenizer))


@pytest.fixture
def tiny_model_dir(tokenizer, tmp_path):
    """A tiny Llama + tokenizer saved as a Hugging Face directory."""
    d = tmp_path / "tiny-llama"
    make_tiny_llama(len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def write_corpus(p):
    p.write_text("".join(json.dumps({"id": i, "contents": f"{t}\n{x}"}) + "\n" for i, t, x in FACTS))
    return p


def write_qa(p):
    rows = [
        {"id": i, "question": q, "answers": a, "source": "toy" if n % 2 else "toy2"}
        for n, (i, q, a) in enumerate(QUESTIONS)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def corpus_file(tmp_path):
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture
def qa_file(tmp_path):
    return write_qa(tmp_path / "qa.jsonl")


@pytest.fixture
def plans_file(tmp_path):
    """QA JSONL whose rows carry `bridge` and `oracle_queries`, as VitalFactbook's do."""
    p = tmp_path / "plans.jsonl"
    p.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "answers": a, "source": "toy", "bridge": b, "oracle_queries": oq})
            + "\n"
            for i, q, a, b, oq in PLANS
        )
    )
    return p
