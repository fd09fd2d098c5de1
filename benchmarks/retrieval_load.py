"""Load test of the BM25 retrieval server: paced load, then saturation, against the in-process index.

    python benchmarks/retrieval_load.py [--corpus corpus.jsonl] [--duration 30] [--rate 200] [--clients 8]

Without `--corpus`, a synthetic corpus of the VitalFactbook's size (43k passages, Zipf-distributed words) stands
in. The server runs in its own process (`igpo serve`) on a free loopback port; each load client is a thread with
its own `HTTPRetriever` (no cache, no retries: every failure is counted). Each client paces its requests on a
fixed schedule (rate / clients per second); latency is measured from send to answer, and `lag` from the scheduled
send time, which shows when the server could not keep up. The saturation phase runs the same clients closed-loop
to find the server's capacity; the ratio divides it by the in-process index's single-query throughput. The three
measurements run `--repeats` times: each repeat's figures are kept, the phases' requests pooled over the repeats,
and each figure summarised (median, min / max, quartiles); with the machine (CPU model, flags, torch's CPU
capability, threads) and the load average before each repeat. Prints the JSON (and writes it to `--out`).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from common import load_average, machine_record, summaries
from igpo.data.loaders import load_corpus
from igpo.retrieval.base import RetrievalError
from igpo.retrieval.client import HTTPRetriever
from igpo.retrieval.index import build_index, load_index

N_PASSAGES = 43_000  # the VitalFactbook corpus: ~10k Wikipedia leads + ~32.6k Factbook fields


def synthetic_corpus(path: Path, n: int, seed: int = 0) -> None:
    """n passages over a 40k-word vocabulary with Zipfian word frequencies, 10 to 120 words each."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "vin", "dra", "pe", "gu", "zor", "el", "tha", "mi", "no", "bru"]

    def word(i: int) -> str:  # a distinct pronounceable word per integer: its base-16 digits as syllables
        out = ""
        while True:
            i, d = divmod(i, 16)
            out += syllables[d]
            if i == 0:
                return out

    vocab = np.array([word(i + 16) for i in rng.permutation(40_000)])
    p = 1 / np.arange(1, len(vocab) + 1) ** 1.05
    lengths = np.clip(rng.lognormal(3.7, 0.6, n), 10, 120).astype(int)
    words = vocab[rng.choice(len(vocab), int(lengths.sum()) + 2 * n, p=p / p.sum())]
    with path.open("w") as f:
        pos = 0
        for i, length in enumerate(lengths):
            title = " ".join(words[pos : pos + 2]).title()
            text = " ".join(words[pos + 2 : pos + 2 + length])
            pos += 2 + length
            f.write(json.dumps({"id": str(i), "contents": f"{title}\n{text}"}) + "\n")


def make_queries(corpus: Path, n: int, seed: int = 1) -> list[str]:
    """Queries of 3 to 7 words taken from random passages: they have answers, as agent queries mostly do."""
    rng = np.random.default_rng(seed)
    passages = load_corpus(corpus)
    out = []
    for i in rng.choice(len(passages), n):
        words = f"{passages[i].title} {passages[i].text}".split()
        k = min(len(words), int(rng.integers(3, 8)))
        out.append(" ".join(rng.choice(words, k, replace=False)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)} | {"max": round(float(a.max()), 2)}


def run_clients(url: str, queries: list[str], topk: int, clients: int, duration: float, rate: float | None) -> dict:
    """`clients` threads for `duration` s; paced at `rate` in all when given, else as fast as they can. Returns
    each request's latency and lag (ms), the errors and the seconds it took."""
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    stop = start + duration

    def client(c: int) -> None:
        retriever = HTTPRetriever(url, cache_dir=None, retries=0, timeout_s=5.0, breaker_failures=10**9)
        interval = clients / rate if rate else 0.0
        i = 0
        while True:
            scheduled = start + (i + c / clients) * interval
            now = time.perf_counter()
            if scheduled >= stop or now >= stop:
                break
            if scheduled > now:
                time.sleep(scheduled - now)
            q = queries[(i * clients + c) % len(queries)]
            sent = time.perf_counter()
            try:
                retriever.search([q], topk)
                error = None
            except RetrievalError as e:
                error = str(e)
            done = time.perf_counter()
            with lock:
                latencies.append((done - sent) * 1000)
                lags.append((done - max(scheduled, start)) * 1000)
                if error:
                    errors.append(error)
            i += 1
        retriever.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "lags": lags, "errors": errors, "elapsed": time.perf_counter() - start}


def describe(phases: list[dict], rate: float | None) -> dict:
    """One phase's figures over the repeats `phases` (`run_clients` results), their requests pooled: counts
    summed, rate over their summed time, latency percentiles over every request."""
    latencies = [x for p in phases for x in p["latencies"]]
    lags = [x for p in phases for x in p["lags"]]
    errors = [e for p in phases for e in p["errors"]]
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "achieved_rps": round(len(latencies) / sum(p["elapsed"] for p in phases), 1),
        "latency_ms": percentiles(latencies),
        "lag_from_schedule_ms": percentiles(lags) if rate else None,
    }


def inprocess_qps(index_dir: Path, queries: list[str], topk: int, seconds: float) -> float:
    retriever = load_index(index_dir)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        retriever.search([queries[n % len(queries)]], topk)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="corpus JSONL (default: a synthetic corpus of 43k passages)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of paced load")
    ap.add_argument("--rate", type=float, default=200.0, help="target requests/s, all clients together")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--saturation", type=float, default=10.0, help="seconds of closed-loop load (0: skip)")
    ap.add_argument("--inprocess", type=float, default=5.0, help="seconds of the in-process index's throughput")
    ap.add_argument("--repeats", type=int, default=3, help="times each of the three measurements runs")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="igpo-bench-") as tmp:
        tmp = Path(tmp)
        corpus = args.corpus
        if corpus is None:
            corpus = tmp / "synthetic.jsonl"
            synthetic_corpus(corpus, N_PASSAGES)
        t0 = time.perf_counter()
        meta = build_index(corpus, "bm25", tmp / "index", show_progress=False)
        build_s = time.perf_counter() - t0
        queries = make_queries(corpus, 5000)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "igpo", "serve", "--index", str(tmp / "index"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            repeats = []
            for _ in range(args.repeats):
                load = load_average()
                base_qps = inprocess_qps(tmp / "index", queries, args.topk, args.inprocess)
                paced = run_clients(url, queries, args.topk, args.clients, args.duration, args.rate)
                saturated = (
                    run_clients(url, queries, args.topk, args.clients, args.saturation, None)
                    if args.saturation
                    else None
                )
                repeats.append(
                    {"load_avg": load, "inprocess_queries_per_s": base_qps, "paced": paced, "saturated": saturated}
                )
            server_stats = httpx.get(f"{url}/health").json()["stats"]
        finally:
            server.terminate()
            server.wait(timeout=30)

    per_repeat = [
        {
            "load_avg": r["load_avg"],
            "inprocess_queries_per_s": round(r["inprocess_queries_per_s"], 1),
            "paced": describe([r["paced"]], args.rate),
            "saturated": describe([r["saturated"]], None) if args.saturation else None,
        }
        for r in repeats
    ]
    figures = {"inprocess_queries_per_s": [r["inprocess_queries_per_s"] for r in per_repeat]}
    for phase in ("paced", "saturated") if args.saturation else ("paced",):
        figures[f"{phase}_achieved_rps"] = [r[phase]["achieved_rps"] for r in per_repeat]
        for q in ("p50", "p99"):
            figures[f"{phase}_latency_{q}_ms"] = [r[phase]["latency_ms"].get(q, float("nan")) for r in per_repeat]
    summary = summaries(figures)
    base_qps = summary["inprocess_queries_per_s"]["median"]
    paced = describe([r["paced"] for r in repeats], args.rate)
    saturated = describe([r["saturated"] for r in repeats], None) if args.saturation else None
    result = {
        "benchmark": "retrieval_load",
        "corpus": {
            "source": str(args.corpus) if args.corpus else "synthetic",
            "n_passages": meta["corpus"]["n_passages"],
        },
        "config": {
            "rate": args.rate,
            "clients": args.clients,
            "topk": args.topk,
            "duration_s": args.duration,
            "saturation_s": args.saturation,
            "inprocess_s": args.inprocess,
            "repeats": args.repeats,
        },
        "index_build_s": round(build_s, 1),
        "inprocess_queries_per_s": round(base_qps, 1),  # median of the repeats
        "paced": paced,  # every repeat's requests
        "saturated": saturated,
        "summary": summary,
        "repeats": per_repeat,
        "server": server_stats
        | {"mean_queries_per_batch": round(server_stats["queries"] / max(server_stats["batches"], 1), 2)},
        "ratio_server_to_inprocess": round(saturated["achieved_rps"] / base_qps, 3) if saturated else None,
        "ratio_paced_to_inprocess": round(paced["achieved_rps"] / base_qps, 3),
        "targets_met": paced["errors"] == 0
        and paced["latency_ms"].get("p99", 1e9) < 100
        and paced["achieved_rps"] >= 0.95 * args.rate,
        "machine": machine_record(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
