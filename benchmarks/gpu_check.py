"""A check of a GPU machine, with nothing to download: one JSON of what ran, what passed and what it took.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json                  # cuda, Qwen2.5-0.5B's shape
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --tiny --out check.json   # the CPU run the tests make

Parts, each with its status (`ok`, `failed` with the error, or `not_run` with the reason) in the JSON:

- `tests`: the test suite's device tests (`pytest -m device`, the tests that take the `device` fixture) with
  IGPO_TEST_DEVICE set to `--device`: counts of passed, failed, errors, the failing tests and the output's tail;
- `steps`: `--steps` IGPO steps (`Trainer.train_step`) of a randomly initialised model of Qwen2.5-0.5B's shape
  (Qwen2: 24 layers, hidden 896, 14 heads, 2 KV heads, MLP 4864, tied embeddings; `--tiny`: 2 layers, hidden 64),
  built in code with `igpo.testing`'s tokenizer (its vocabulary, not Qwen's 151,936 tokens), in fp32 with
  `trainer.autocast: bfloat16` (bf16 compute, fp32 master weights). The rollout is the KV-cache engine run over
  every context, with `igpo.testing`'s scripted generations (searches, answers) in place of its own, over an
  in-memory word retriever, so that episodes have several turns and beliefs are scored. Per step: seconds by
  phase (the trainer's timer) and in all, the loss terms, the peak GPU memory (`torch.cuda.max_memory_allocated`);
  the dtypes of the parameters, optimizer states and of a linear layer's outputs;
- `beliefs`: one more step's episodes scored by the reference, packed and cache implementations on the device, in
  fp32 and under bf16 autocast (each against the reference of the same precision): largest differences and
  seconds. fp32 must agree within 1e-4 (the tests' tolerance); bf16 is reported, and must be finite;
- `machine`: `igpo.machine.machine_record()`, and on cuda the GPU's name, memory and the CUDA and cuDNN versions.

Needs torch, transformers, tokenizers, jinja2, numpy, pydantic and pyyaml (and pytest, bm25s and PyStemmer for
the tests); a missing one is named in the JSON (`status: missing_imports`) and the exit status is 2. The exit
status is 0 when every part is `ok`, else 1. `--budget-s` (default 420) bounds the whole run: the tests get what
is left after a reserve for the other parts, a step starts only while time is left, and a part that does not
start is `not_run`, with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name: what to install
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "jinja2": "jinja2",
    "numpy": "numpy",
    "pydantic": "pydantic",
    "yaml": "pyyaml",
}
FOR_TESTS = {"pytest": "pytest", "bm25s": "bm25s", "Stemmer": "PyStemmer"}
BELIEF_TOL = 1e-4  # fp32: the agreement tests/policy/test_beliefs.py asserts
RESERVE_S = 150  # of the budget, kept for the steps and beliefs while the tests run
SEARCH_TOPK = 2


def missing(modules: dict[str, str]) -> list[str]:
    """The packages (install names) of `modules` that cannot be imported."""
    return [pip for mod, pip in modules.items() if importlib.util.find_spec(mod) is None]


def model_config(vocab_size: int, tiny: bool, tok):
    """Qwen2.5-0.5B's shape (or a 2-layer one) over `vocab_size` tokens."""
    from transformers import Qwen2Config

    dims = (
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
        if tiny
        else {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14}
    )
    return Qwen2Config(
        vocab_size=vocab_size,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **dims,
    )


def build_model(args, tok):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = model_config(len(tok), args.tiny, tok)
    cfg._attn_implementation = "sdpa"
    with torch.device(args.device):  # initialised where it runs: no 0.4B-parameter init on the CPU
        model = Qwen2ForCausalLM(cfg)
    return model.float()


def run_tests(args, timeout_s: float) -> dict:
    """`pytest -m device` on `args.tests` with IGPO_TEST_DEVICE=args.device, in a subprocess."""
    if miss := missing({"pytest": "pytest"}):
        raise PartFailed(f"not installed: {', '.join(miss)}", {"missing": miss})
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        # A test module that cannot be imported (an extra of the dev install missing) is listed, and the others run.
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        cmd += ["--continue-on-collection-errors"]
        cmd += args.tests
        path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
        env = os.environ | {"IGPO_TEST_DEVICE": args.device, "PYTHONPATH": path}
        out = {"command": f"IGPO_TEST_DEVICE={args.device} {shlex.join(['python', *cmd[1:]])}"}
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            text = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
            out["output_tail"] = text[-3000:]
            raise PartFailed(f"pytest ran past the {timeout_s:.0f} s left to it", out) from None
        out["seconds"] = time.perf_counter() - t
        out["returncode"] = proc.returncode
        out["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
        if xml.exists():
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            out["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            out |= {"failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"]}
            out["not_passed"], out["collection_errors"] = [], []
            for case in suite.iter("testcase"):
                err = case.find("failure") if case.find("failure") is not None else case.find("error")
                if err is None:
                    continue
                if err.get("message") == "collection failure":  # the module: its error's last line
                    last = (err.text or "").strip().splitlines()[-1:] or [""]
                    out["collection_errors"].append(f"{case.get('name')}: {last[0].removeprefix('E   ')}")
                else:
                    out["not_passed"].append(f"{case.get('classname')}::{case.get('name')}")
    if proc.returncode != 0 or not out.get("passed"):
        why = f"pytest exited {proc.returncode}: {out.get('passed', 0)} passed, {len(out.get('not_passed', []))} failed"
        if out.get("collection_errors"):
            why += f", {len(out['collection_errors'])} test modules not importable"
        raise PartFailed(why, out)
    return out


class PartFailed(RuntimeError):
    """A part ran but its result is wrong: the message, and what it measured."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def make_trainer(args, out_dir: Path):
    import torch

    from igpo.agent.build import make_chat_format
    from igpo.agent.tools import SearchTool, Toolbox
    from igpo.config import load_config
    from igpo.data.loaders import QAExample
    from igpo.testing import (
        FACTS,
        QUESTIONS,
        SCRIPTS,
        ScriptedGenerator,
        ScriptedOverEngine,
        WordRetriever,
        make_tokenizer,
    )
    from igpo.train.trainer import Trainer

    tok = make_tokenizer()
    size = ["rollout.questions_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=24"]
    if not args.tiny:
        size = ["rollout.questions_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=64"]
    overrides = [
        f"model.device={args.device}",
        "trainer.autocast=bfloat16",
        f"trainer.out_dir={out_dir}",
        "trainer.loggers=[jsonl]",
        "trainer.lr=1e-5",
        "trainer.micro_batch_size=4",
        "rollout.max_turns=3",
        "algorithm.kl_coef=0.01",
        "algorithm.entropy_coef=0.01",
        *size,
    ]
    cfg = load_config(None, overrides)
    model = build_model(args, tok)
    linear_dtypes: set = set()
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, o: linear_dtypes.add(str(o.dtype)))
    toolbox = Toolbox([SearchTool(WordRetriever(FACTS), topk=SEARCH_TOPK)])
    script = ScriptedGenerator(tok, make_chat_format(cfg, tok, toolbox), SCRIPTS)
    engine = ScriptedOverEngine(model, tok.pad_token_id, script)
    examples = [QAExample(i, q, a) for i, q, a in QUESTIONS]
    trainer = Trainer(cfg, model=model, tokenizer=tok, toolbox=toolbox, train_set=examples, generator=engine)
    info = {
        "overrides": overrides,
        "model": {
            "class": type(model).__name__,
            "shape": "tiny" if args.tiny else "Qwen2.5-0.5B",
            **{k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")},
            "num_key_value_heads": model.config.num_key_value_heads,
            "intermediate_size": model.config.intermediate_size,
            "vocab_size": model.config.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "tokenizer": "igpo.testing.make_tokenizer",
    }
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    return trainer, info, linear_dtypes


def run_steps(args, trainer, linear_dtypes: set, deadline: float) -> dict:
    import torch

    cuda = args.device.startswith("cuda")
    out: dict = {"steps": []}
    for _ in range(args.steps):
        if time.monotonic() > deadline:
            raise PartFailed(f"time budget spent after {len(out['steps'])} of {args.steps} steps", out)
        t = time.perf_counter()
        row = trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        step = {
            "step": row["step"],
            "seconds": time.perf_counter() - t,
            "phase_seconds": row["seconds"],
            "losses": {k: row.get(k) for k in ("pg_loss", "kl", "entropy", "grad_norm")},
            "generated_tokens": row.get("generated_tokens"),
            "tool_calls": row.get("tool_calls"),
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }
        out["steps"].append(step)
        print(f"step {step['step']}: {step['seconds']:.2f} s {row['seconds']}", flush=True)
    params = list(trainer.model.parameters())
    states = trainer.optimizer.state.values()
    out["param_dtypes"] = sorted({str(p.dtype) for p in params})
    out["optimizer_state_dtypes"] = sorted({str(v.dtype) for s in states for k, v in s.items() if k != "step"})
    out["linear_output_dtypes"] = sorted(linear_dtypes)
    out["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    bad = [s["step"] for s in out["steps"] if not all(v is not None and math.isfinite(v) for v in s["losses"].values())]
    if bad or out["param_dtypes"] != ["torch.float32"] or out["linear_output_dtypes"] != ["torch.bfloat16"]:
        raise PartFailed(
            f"non-finite losses at steps {bad}, or not bf16 compute from fp32 weights "
            f"(parameters {out['param_dtypes']}, linear outputs {out['linear_output_dtypes']})",
            out,
        )
    return out


def run_beliefs(trainer) -> dict:
    """The beliefs of the trainer's next step's episodes by each implementation, in fp32 and under bf16 autocast."""
    import torch

    from igpo.train.trainer import Timer

    def timed(fn, *a):
        t = time.perf_counter()
        res = fn(*a)
        if trainer.model.device.type == "cuda":
            torch.cuda.synchronize()
        return res, time.perf_counter() - t

    out = {}
    probe = trainer.fmt.belief_probe_ids
    was = trainer.cfg.trainer.autocast
    try:
        for precision in ("float32", "bfloat16"):
            trainer.cfg.trainer.autocast = None if precision == "float32" else precision
            trajs = trainer.collect(trainer.step, Timer())  # the engine keeps the contexts' caches, in this precision
            try:
                _, queries = trainer.belief_queries(trajs)
                stats: dict = {}  # the cache path's `beliefs_from_cache_share`
                ref, ref_s = timed(trainer.trainer_beliefs, "reference", probe, queries, stats)
                packed, packed_s = timed(trainer.trainer_beliefs, "packed", probe, queries, stats)
                cached, cached_s = timed(trainer.trainer_beliefs, "cache", probe, queries, stats)
            finally:
                trainer.generator.release()
            ref_all = torch.cat([r.flatten() for r in ref]) if ref else torch.zeros(0)

            def diff(res, ref_all=ref_all):
                got = torch.cat([r.flatten() for r in res]) if res else torch.zeros(0)
                return float((got - ref_all).abs().max()) if len(got) else None

            out[precision] = {
                "episodes": len(trajs),
                "scored_episodes": len(queries),
                "beliefs": int(ref_all.numel()),
                "from_cache_share": stats.get("beliefs_from_cache_share", 0.0),
                "max_abs_diff_packed_vs_reference": diff(packed),
                "max_abs_diff_cache_vs_reference": diff(cached),
                "seconds": {"reference": ref_s, "packed": packed_s, "cache": cached_s},
                "finite": bool(torch.isfinite(ref_all).all()),
            }
    finally:
        trainer.cfg.trainer.autocast = was
    fp32 = out["float32"]
    wrong = []
    if not fp32["beliefs"]:
        wrong.append("no episode with beliefs to score")
    for key in ("max_abs_diff_packed_vs_reference", "max_abs_diff_cache_vs_reference"):
        if fp32[key] is None or fp32[key] > BELIEF_TOL:
            wrong.append(f"fp32 {key} {fp32[key]} > {BELIEF_TOL}")
        if out["bfloat16"][key] is None or not math.isfinite(out["bfloat16"][key]):
            wrong.append(f"bf16 {key} {out['bfloat16'][key]}")
    if fp32["from_cache_share"] != 1.0 or not (fp32["finite"] and out["bfloat16"]["finite"]):
        wrong.append("caches missing or non-finite beliefs")
    out["tolerance_fp32"] = BELIEF_TOL
    if wrong:
        raise PartFailed("; ".join(wrong), out)
    return out


def machine(device: str) -> dict:
    import torch

    from igpo.machine import machine_record

    out = machine_record()
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        out["gpu"] = {
            "name": props.name,
            "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    return out


def run_part(result: dict, name: str, fn, *args):
    """`fn(*args)` recorded under `result["parts"][name]` with its status; its return value, or None."""
    t = time.perf_counter()
    part = {"status": "ok"}
    value = None
    try:
        value = fn(*args)
        if isinstance(value, dict):
            part["result"] = value
    except PartFailed as e:
        part |= {"status": "failed", "error": str(e), "result": e.result}
    except Exception as e:
        part |= {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    part["seconds"] = time.perf_counter() - t
    result["parts"][name] = part
    print(f"{name}: {part['status']} ({part['seconds']:.1f} s){' ' + part['error'] if 'error' in part else ''}")
    return value


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model instead of Qwen2.5-0.5B's shape")
    ap.add_argument("--steps", type=int, default=3, help="IGPO steps (default 3)")
    ap.add_argument("--tests", nargs="+", default=["tests"], help="where pytest looks for device tests (default tests)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="the whole run's seconds (default 420)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON written")
    args = ap.parse_args(argv)
    start = time.monotonic()
    result: dict = {"argv": sys.argv[1:] if argv is None else argv, "device": args.device, "tiny": args.tiny}
    result |= {"status": "ok", "parts": {}}

    miss = missing(REQUIRED)
    if not miss:
        try:
            importlib.import_module("igpo.train.trainer")
        except ImportError as e:  # an import the list above does not name
            miss = [f"{e.name or e}"]
    if miss:
        result |= {"status": "missing_imports", "missing": miss, "missing_for_tests": missing(FOR_TESTS)}
        write(result, args.out)
        print(f"gpu_check: cannot run, not installed: {', '.join(miss)} (see {args.out})", file=sys.stderr)
        return 2
    result["missing_for_tests"] = missing(FOR_TESTS)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        result["status"] = "no_cuda"
        write(result, args.out)
        print(f"gpu_check: --device {args.device}, but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2

    deadline = start + args.budget_s
    run_part(result, "machine", machine, args.device)
    run_part(result, "tests", run_tests, args, max(30.0, deadline - time.monotonic() - RESERVE_S))
    with tempfile.TemporaryDirectory() as tmp:
        built = run_part(result, "setup", make_trainer, args, Path(tmp) / "run")
        if built is None:
            result["parts"]["steps"] = result["parts"]["beliefs"] = {"status": "not_run", "reason": "setup failed"}
        else:
            trainer, info, linear_dtypes = built
            result["parts"]["setup"]["result"] = info
            run_part(result, "steps", run_steps, args, trainer, linear_dtypes, deadline)
            if time.monotonic() < deadline:
                run_part(result, "beliefs", run_beliefs, trainer)
            else:
                result["parts"]["beliefs"] = {"status": "not_run", "reason": f"time budget ({args.budget_s} s) spent"}
    result["seconds"] = time.monotonic() - start
    if any(p["status"] != "ok" for p in result["parts"].values()):
        result["status"] = "failed"
    write(result, args.out)
    print(f"gpu_check: {result['status']} in {result['seconds']:.0f} s -> {args.out}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
