"""Bad input to `igpo train`: one clear error naming the thing, exit 2, and no run folder left to block a rerun."""

import json

import pytest
from typer.testing import CliRunner

from igpo.cli import app

runner = CliRunner()


@pytest.fixture
def bare_tokenizer_model(tmp_path, tiny_model_dir):
    """The tiny model with a tokenizer that has neither a chat template nor ChatML's control tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(
        ["plain text only"] * 3,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    d = tmp_path / "bare"
    d.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            (d / f.name).write_bytes(f.read_bytes())
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>").save_pretrained(d)
    return d


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.integration
def test_each_bad_input_is_one_clear_error_and_leaves_no_run_folder(
    tmp_path, tiny_model_dir, corpus_file, qa_file, bare_tokenizer_model
):
    out = tmp_path / "run"
    good = {
        "model.path": tiny_model_dir,
        "data.train": qa_file,
        "retrieval.corpus": corpus_file,
        "trainer.out_dir": out,
        "trainer.steps": 1,
        "rollout.group_size": 2,
        "rollout.questions_per_step": 1,
        "rollout.max_new_tokens": 4,
        "rollout.max_turns": 1,
    }
    bad_rows = write(tmp_path / "bad.jsonl", [{"question": "q1", "answers": ["a"]}, {"question": "q2"}])
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in tiny_model_dir.iterdir():
        data = f.read_bytes()
        (truncated / f.name).write_bytes(data[: len(data) // 2] if f.name == "model.safetensors" else data)
    cases = [
        ({"rollout.group_sise": 4}, "rollout.group_sise: unknown key"),
        ({"trainer.steps": "many"}, "trainer.steps: Input should be a valid integer"),
        (
            {"algorithm.estimator": "grpo", "rollout.group_size": 1},
            "rollout.group_size must be >= 2 for estimator grpo",
        ),
        ({"algorithm.format_penalty": ".nan"}, "algorithm.format_penalty: Input should be a finite number"),
        ({"rollout.max_context": 64}, "rollout.max_context: 64 tokens cannot hold the prompt"),
        ({"trainer.max_bad_steps": 0}, "trainer.max_bad_steps: Input should be greater than or equal to 1"),
        ({"data.train": tmp_path / "missing.jsonl"}, "QA file not found"),
        ({"data.train": bad_rows}, "bad.jsonl: row 2: no `answers`"),
        ({"data.eval": bad_rows, "trainer.eval_every": 1}, "bad.jsonl: row 2: no `answers`"),
        ({"model.path": tmp_path / "no-model"}, "model.path: " + str(tmp_path / "no-model") + " does not exist"),
        ({"model.path": truncated}, "model.path: cannot load a causal LM from " + str(truncated) + ": SafetensorError"),
        ({"model.path": bare_tokenizer_model}, f"tokenizer {bare_tokenizer_model}: it has no chat template"),
        ({"retrieval.corpus": write(tmp_path / "empty.jsonl", [])}, "empty.jsonl: the corpus is empty"),
        (
            {"retrieval.corpus": write(tmp_path / "dup.jsonl", [{"id": "p1", "contents": "a\nb"}] * 2)},
            "dup.jsonl: row 2: duplicate id 'p1'",
        ),
        (
            {"retrieval.corpus": write(tmp_path / "junk.jsonl", ['{"id": "p1", "contents": "a\\nb"}', "{oops"])},
            "junk.jsonl: row 2: not valid JSON",
        ),
    ]
    for change, fragment in cases:
        args = [f"{k}={v}" for k, v in {**good, **change}.items()]
        res = runner.invoke(app, ["train", *args])
        assert res.exit_code == 2, (change, res.output)
        output = " ".join(res.output.split())  # rich wraps long lines; model loading may print progress first
        assert output.count("error: ") == 1 and "Traceback" not in output, (change, output)
        assert fragment in output.split("error: ")[1], (change, output)
        assert not out.exists(), change
    res = runner.invoke(app, ["train", *[f"{k}={v}" for k, v in good.items()]])  # the same folder still works
    assert res.exit_code == 0, res.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
