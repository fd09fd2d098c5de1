"""Weights & Biases beside TensorBoard: offline unless the user sets a key, and one wandb run across a resume."""

import json
from pathlib import Path

import pytest
import torch

from igpo.config import ConfigError, load_config
from igpo.report.runlog import wandb_mode
from igpo.train import checkpoint as ckpt
from igpo.train.trainer import Trainer, make_chat_format, make_toolbox
from tests.conftest import make_tiny_llama
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, make_cfg


def wandb_records(run_file: Path):
    """The protobuf records of an offline run's transaction log (`run-<id>.wandb`): a 7-byte header (":W&B",
    magic, version), then LevelDB-log blocks of 32 KiB whose chunks have a 7-byte header (CRC-32, length, type:
    1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def history(run_dir: Path) -> tuple[str, list[dict]]:
    """(run id, history rows) of one offline run folder."""
    (run_file,) = run_dir.glob("run-*.wandb")
    records = list(wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    rows = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    return run.run_id, rows


def test_offline_unless_the_user_sets_a_key(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.tensorboard=false", "`tensorboard` was replaced by `loggers`"),
        ("trainer.loggers=[tensorboard]", "`loggers` must include jsonl"),
        ("trainer.loggers=[jsonl,mlflow]", "trainer.loggers.1"),
    ],
)
def test_logger_settings_that_are_refused(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


@pytest.mark.integration
def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch, tokenizer, corpus_file, qa_file):
    import wandb

    for var in ("WANDB_MODE", "WANDB_API_KEY"):  # the default: offline
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    cfg = make_cfg(
        tmp_path,
        "unused",
        corpus_file,
        qa_file,
        "trainer.loggers=[jsonl,wandb]",
        "trainer.save_every=1",
        "trainer.wandb.tags=[test]",
    )
    model = make_tiny_llama(len(tokenizer))

    def trainer(steps: int) -> Trainer:
        c = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"steps": steps})})
        toolbox = make_toolbox(c)
        return Trainer(
            c,
            model=model,
            tokenizer=tokenizer,
            toolbox=toolbox,
            generator=ScriptedGenerator(tokenizer, make_chat_format(c, tokenizer, toolbox), SCRIPTS),
        )

    # wandb.finish() leaves the closing of the run's files to its service: teardown waits for it
    trainer(2).fit()
    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "offline")
    resumed = trainer(3)
    assert resumed.step == 2
    resumed.fit()
    wandb.teardown()

    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, second = sorted((run / "wandb").glob("offline-run-*"))
    (id1, rows1), (id2, rows2) = history(first), history(second)
    state = torch.load(ckpt.checkpoint_dirs(run)[-1] / ckpt.STATE, weights_only=False)
    assert id1 == id2 == state["wandb_run_id"]
    assert [r["_step"] for r in rows1] == [0, 1] and [r["_step"] for r in rows2] == [2]
    for m, r in zip(metrics, rows1 + rows2):
        assert r["train/f1"] == pytest.approx(m["f1"])
        assert r["train/outcome_reward"] == pytest.approx(m["outcome_reward"])
        assert r["train/seconds/rollout"] == pytest.approx(m["seconds"]["rollout"])
    assert not list(run.glob("events.out.tfevents.*"))  # tensorboard is not in trainer.loggers
