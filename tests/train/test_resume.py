"""Exact resume: a run interrupted (in-process, or by SIGKILL at random points, checkpoint writing included) and
restarted with the same command ends bitwise equal to an uninterrupted run; damaged checkpoints are skipped."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import igpo
from igpo.agent.build import make_chat_format, make_toolbox
from igpo.train import checkpoint as ckpt
from igpo.train.faults import KILL_ENV
from igpo.train.trainer import Trainer
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, make_cfg

pytestmark = pytest.mark.integration
TIMING = ("seconds", "tokens_per_s")


def rows_of(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_final_state(a, b) -> None:
    """Same weights and optimizer state, bit for bit, in the last checkpoints of runs `a` and `b`."""
    ca, cb = ckpt.checkpoint_dirs(a)[-1], ckpt.checkpoint_dirs(b)[-1]
    assert ca.name == cb.name
    wa, wb = load_file(ca / "model.safetensors"), load_file(cb / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(c / ckpt.STATE, weights_only=False) for c in (ca, cb))
    moments = [(sa["optimizer"]["state"][i], sb["optimizer"]["state"][i]) for i in sa["optimizer"]["state"]]
    assert moments and all(torch.equal(x[k], y[k]) for x, y in moments for k in x)
    assert sa["scheduler"] == sb["scheduler"]


def scripted_trainer(cfg, tokenizer, steps: int) -> Trainer:
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"steps": steps})})
    toolbox = make_toolbox(cfg)
    return Trainer(
        cfg,
        toolbox=toolbox,
        generator=ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS, seed=None),
    )


def test_interrupted_run_resumes_exactly(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    """Tools, beliefs and IG in every step; a warm-up makes the scheduler state matter."""
    extra = [
        "trainer.save_every=2",
        "trainer.warmup_steps=3",
        "rollout.group_size=2",
        "trainer.eval_every=2",
        f"data.eval={qa_file}",
        "trainer.eval_size=2",
    ]
    whole = make_cfg(tmp_path / "a", tiny_model_dir, corpus_file, qa_file, *extra)
    scripted_trainer(whole, tokenizer, 4).fit()

    cut = make_cfg(tmp_path / "b", tiny_model_dir, corpus_file, qa_file, *extra)

    def stop_after_step_2(m):  # the row of step 2 is written, its checkpoint (at 4) never is
        if m["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scripted_trainer(cut, tokenizer, 4).fit(progress=stop_after_step_2)
    assert len(rows_of(tmp_path / "b" / "run")) == 3
    resumed = scripted_trainer(cut, tokenizer, 4)
    assert resumed.step == 2
    resumed.fit()

    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert [r["step"] for r in rows_of(b)] == [0, 1, 2, 3]
    assert rows_of(b) == rows_of(a)
    # The evaluation of the checkpoint the run resumed from (step 2) is kept, not lost: both runs hold 2 and 4.
    evals = [[json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()] for run in (a, b)]
    assert [r["step"] for r in evals[1]] == [2, 4] and evals[1] == evals[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in (a, b):  # TensorBoard's purge on resume does not take the kept evaluation with it
        acc = EventAccumulator(str(run))
        acc.Reload()
        assert [e.step for e in acc.Scalars("eval/overall/f1")] == [2, 4]
    assert any("ig_turn1_mean" in r for r in rows_of(a)) and any(r["tool_calls"] for r in rows_of(a))
    assert_same_final_state(a, b)
    state = torch.load(ckpt.checkpoint_dirs(b)[-1] / ckpt.STATE, weights_only=False)
    assert state["step"] == 4 and state["data"] == {"questions_per_step": 2, "examples_seen": 8}
    assert state["bad_steps_in_a_row"] == 0 and set(state["rng"]) >= {"torch", "numpy", "python"}


def test_ig_warm_up_gate_switches_on_and_survives_a_resume(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    """The gate decides each step from the EMA of the steps before it; the EMA and the switch are in the
    checkpoint, so a run interrupted after the switch resumes to the same rows and weights."""
    extra = [
        "trainer.save_every=2",
        "rollout.group_size=2",
        "algorithm.ig_gate_threshold=0.0",
        "algorithm.ig_gate_ema=0.5",
    ]
    whole = make_cfg(tmp_path / "a", tiny_model_dir, corpus_file, qa_file, *extra)
    scripted_trainer(whole, tokenizer, 4).fit()
    a = rows_of(tmp_path / "a" / "run")
    # step 0: no step seen yet, IG off (no belief pass); from step 1 on (EMA 0 or more >= 0) on, and it stays on
    assert [r["ig_gate_on"] for r in a] == [False, True, True, True]
    assert "ig_turn1_mean" not in a[0] and any("ig_turn1_mean" in r for r in a[1:])
    ema = a[0]["f1"]
    for r in a[1:]:
        ema = 0.5 * r["f1"] + 0.5 * ema
        assert r["ig_gate_ema"] == pytest.approx(ema)

    cut = make_cfg(tmp_path / "b", tiny_model_dir, corpus_file, qa_file, *extra)

    def stop_after_step_2(m):
        if m["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scripted_trainer(cut, tokenizer, 4).fit(progress=stop_after_step_2)
    resumed = scripted_trainer(cut, tokenizer, 4)
    assert resumed.step == 2 and resumed.ig_gate.opened and resumed.ig_gate.ema == pytest.approx(a[1]["ig_gate_ema"])
    resumed.fit()
    b = tmp_path / "b" / "run"
    assert rows_of(b) == a
    assert_same_final_state(tmp_path / "a" / "run", b)


def test_damaged_checkpoints_are_detected_and_the_previous_one_used(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, caplog
):
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        "trainer.save_every=1",
        "trainer.keep_last=3",
        "rollout.group_size=2",
    )
    scripted_trainer(cfg, tokenizer, 3).fit()
    run = tmp_path / "run"
    s1, s2, s3 = ckpt.checkpoint_dirs(run)
    assert all(ckpt.verify(c) is None for c in (s1, s2, s3))

    weights = s3 / "model.safetensors"  # one flipped byte: same size, another hash
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    state = s2 / ckpt.STATE  # cut in half, as a full disk would leave it
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="igpo.train.checkpoint"):
        trainer = scripted_trainer(cfg, tokenizer, 3)
    assert trainer.step == 1
    assert "model.safetensors does not match its SHA-256" in caplog.text and "trainer_state.pt has" in caplog.text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000001",
        "step_000002.corrupt",
        "step_000003.corrupt",
    ]

    (s1 / ckpt.MANIFEST).unlink()  # a save that never finished
    assert ckpt.latest_checkpoint(run) is None and "no manifest.json" in caplog.text


def test_unreadable_metrics_rows_are_dropped_on_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "f1": 0.')  # cut mid-row
    with caplog.at_level(logging.WARNING):
        ckpt.truncate_rows(path, 2)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n' and "dropped 1 unreadable rows" in caplog.text
    ckpt.truncate_rows(tmp_path / "absent.jsonl", 2)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_resume_that_cannot_replay_exactly_is_warned_about(tmp_path, caplog):
    from igpo.retrieval.client import HTTPRetriever

    client = HTTPRetriever("http://127.0.0.1:9", cache_dir=tmp_path / "cache")
    client._remember_index("index-b")  # what this URL served last, as the cache remembers it
    saved = {
        "step": 3,
        "data": {"questions_per_step": 4, "examples_seen": 12},
        "retrieval": {"url": client.base_url, "index_id": "index-a", "cache_dir": str(tmp_path / "cache")},
    }
    with caplog.at_level(logging.WARNING):
        ckpt.check_resume_state(saved, 2, client)
    assert "rollout.questions_per_step was 4 and is now 2" in caplog.text
    assert "the retrieval index_id was index-a and is now index-b" in caplog.text
    caplog.clear()
    ckpt.check_resume_state(
        {**saved, "data": {"questions_per_step": 2}, "retrieval": client.cache_pointer()}, 2, client
    )
    assert caplog.text == ""
    client.close()


# --------------------------------------------------------------------------------- SIGKILL, in a real process
STEP_POINTS = ["rollout", "ref_logprobs", "update", "metrics"]  # mid-step: nothing of the step is saved yet
SAVE_POINTS = ["save.model", "save.state", "save.manifest", "save.prune"]  # while a checkpoint is written
STEPS = 12


def test_sigkill_three_times_then_finish_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, corpus_file, qa_file):
    """`igpo train --config cfg.yaml`, SIGKILLed three times (at a kill point inside a step and one inside a save,
    both drawn at random, and once from outside at a random moment), then run to the end with the same command."""
    config = tmp_path / "cfg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model_dir)},
                "data": {"train": str(qa_file)},
                "retrieval": {"corpus": str(corpus_file)},
                "rollout": {"group_size": 2, "questions_per_step": 2, "max_turns": 2, "max_new_tokens": 8},
                "algorithm": {
                    "kl_coef": 0.01,
                    "entropy_coef": 0.01,
                },  # the random model answers nothing: keep gradients
                "trainer": {
                    "steps": STEPS,
                    "lr": 1e-3,
                    "warmup_steps": 4,
                    "save_every": 4,
                    "keep_last": 2,
                    "out_dir": str(tmp_path / "run"),
                },
            }
        )
    )
    src = str(Path(igpo.__file__).parents[1])  # the child imports the igpo this test imported
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    env.pop(KILL_ENV, None)

    started = []

    def start(out_dir=None, kill_at=None):
        """The process and the path of its output."""
        cmd = [sys.executable, "-m", "igpo.cli", "train", "--config", str(config)]
        cmd += [f"trainer.out_dir={out_dir}"] if out_dir else []
        log = tmp_path / f"log{time.monotonic_ns()}.txt"
        with log.open("w") as out:  # the child keeps its own handle
            proc = subprocess.Popen(
                cmd,
                env={**env, KILL_ENV: kill_at} if kill_at else env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        started.append(proc)
        return proc, log

    try:
        reference, ref_log = start(out_dir=tmp_path / "reference")  # runs beside the interrupted one

        rng = random.Random(20264)
        # Each kill comes after the process has made progress (its second save; its second to fourth step; its third
        # step line), so that the restarts resume from checkpoints, not only from scratch.
        plan = [f"{rng.choice(SAVE_POINTS)}@2", f"{rng.choice(STEP_POINTS)}@{rng.randint(2, 4)}"]
        rng.shuffle(plan)
        plan.append(f"external after {rng.uniform(0.0, 0.4):.2f}s")
        resumed_at = []  # the checkpoint each process starts from, for the summary

        def newest():
            return [c.name for c in ckpt.checkpoint_dirs(tmp_path / "run")][-1:]

        for kill in plan:
            resumed_at.append(newest())
            if kill.startswith("external"):
                proc, log = start()
                # the line that opens the stage, then one a step
                while sum(line.startswith("[train] step ") for line in log.read_text().splitlines()) < 1 + 3:
                    assert proc.poll() is None, log.read_text()
                    time.sleep(0.02)
                time.sleep(float(kill.split()[-1][:-1]))
                proc.send_signal(signal.SIGKILL)
            else:
                proc, log = start(kill_at=kill)
            assert proc.wait(timeout=300) == -signal.SIGKILL, (kill, log.read_text())
            if kill.startswith("save.") and not kill.startswith("save.prune"):  # killed before the rename
                assert list((tmp_path / "run" / "checkpoints").glob("*.tmp"))

        resumed_at.append(newest())
        final, log = start()
        assert final.wait(timeout=300) == 0, log.read_text()
        assert reference.wait(timeout=300) == 0, ref_log.read_text()
    finally:  # a failed assertion leaves no process behind
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    run = tmp_path / "run"
    assert [r["step"] for r in rows_of(run)] == list(range(STEPS))  # none repeated, none skipped
    assert resumed_at[1] and resumed_at[-1]  # restarts resumed from checkpoints
    assert rows_of(run) == rows_of(tmp_path / "reference")
    assert_same_final_state(run, tmp_path / "reference")
    assert [c.name for c in ckpt.checkpoint_dirs(run)] == ["step_000008", "step_000012"]
    assert not list((run / "checkpoints").glob("*.tmp"))  # debris of the kills is gone
    print(f"\nkills survived: {plan}; the processes started from: {resumed_at}")
