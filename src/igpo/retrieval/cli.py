"""`igpo index build` and `igpo serve`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

index_app = typer.Typer(add_completion=False, no_args_is_help=True)


@index_app.command("build")
def build(
    corpus: Annotated[Path, typer.Option(help="Corpus JSONL: {id, contents} or {id, title, text}.")],
    out: Annotated[Path, typer.Option(help="Index directory to write.")],
    kind: Annotated[str, typer.Option(help="bm25 or dense.")] = "bm25",
    encoder: Annotated[
        str | None, typer.Option(help="Dense: sentence-transformers model directory (default all-MiniLM-L6-v2).")
    ] = None,
    faiss_factory: Annotated[str, typer.Option(help="Dense: FAISS index factory string (Flat = exact).")] = "Flat",
    batch_size: Annotated[int, typer.Option(help="Dense: passages per encoder batch.")] = 64,
    device: Annotated[str, typer.Option(help="Dense: encoder device (cpu, cuda).")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an index already in --out.")] = False,
) -> None:
    """Build a BM25 or dense index of a corpus, with metadata naming the corpus (sha256) and parameters."""
    from igpo.progress import stage
    from igpo.retrieval.index import RetrievalIndexError, build_index

    if kind not in ("bm25", "dense"):
        raise typer.BadParameter(f"--kind must be bm25 or dense, not {kind!r}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with stage("index", f"building the {kind} index of {corpus} in {out}"):
            meta = build_index(
                corpus,
                kind,
                out,
                encoder=encoder,
                faiss_factory=faiss_factory,
                batch_size=batch_size,
                device=device,
                overwrite=overwrite,
            )
    except (RetrievalIndexError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{meta['kind']} index {meta['index_id']} of {meta['corpus']['n_passages']} passages in {out}")


def serve(
    index: Annotated[Path, typer.Option(help="Index directory (from `igpo index build`).")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding an API key that requests must send.")
    ] = None,
    corpus: Annotated[
        Path | None, typer.Option(help="Refuse to serve unless the index was built from this corpus.")
    ] = None,
    max_queries: Annotated[int, typer.Option(help="Most queries in one request.")] = 256,
    max_query_chars: Annotated[int, typer.Option(help="Longest query, in characters.")] = 4096,
    max_topk: Annotated[int, typer.Option(help="Largest topk (at most 100).", max=100)] = 100,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve an index over HTTP, compatible with Search-R1's retrieval server (POST /retrieve, GET /health)."""
    import uvicorn

    from igpo.retrieval.index import RetrievalIndexError, load_index
    from igpo.retrieval.server import Limits, create_app, index_info, is_loopback

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise typer.BadParameter(f"the environment variable {api_key_env} is not set", param_hint="--api-key-env")
    if not is_loopback(host) and api_key is None:
        typer.echo(f"warning: serving on {host} without an API key: anyone who can reach it can query", err=True)
    try:
        retriever = load_index(index, corpus=corpus)
    except (RetrievalIndexError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    limits = Limits(max_queries=max_queries, max_query_chars=max_query_chars, max_topk=max_topk)
    app = create_app(retriever, index_info=index_info(retriever.meta), api_key=api_key, limits=limits)
    typer.echo(f"serving {retriever.meta['kind']} index {retriever.meta['index_id']} on http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
