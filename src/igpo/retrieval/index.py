"""Saved retrieval indexes: build once (`igpo index build`), load memory-mapped, serve or embed.

An index directory holds:
  meta.json       kind, format, the corpus fingerprint (sha256, passage count, path), scoring parameters, encoder
  passages.arrow  the passages (id, title, text) as an Arrow IPC file, memory-mapped on load
  bm25/           the bm25s matrices (kind bm25), memory-mapped on load
  dense.faiss     the FAISS index (kind dense)

The index is self-contained: serving it needs no corpus file. Given a corpus, loading checks that the index was
built from that very file and refuses otherwise, so results never silently come from another corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pyarrow as pa

from igpo.data.loaders import Passage, load_corpus
from igpo.retrieval.base import Retriever

log = logging.getLogger(__name__)

FORMAT = 1
Kind = Literal["bm25", "dense"]


class RetrievalIndexError(ValueError):
    """An index directory is missing, malformed, or does not match the corpus or encoder it is used with."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ArrowPassages(Sequence[Passage]):
    """Passages read on demand from a memory-mapped Arrow file: a large corpus costs no RAM until used."""

    def __init__(self, path: str | Path):
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().combine_chunks()
        self._id, self._title, self._text = (table.column(c).chunk(0) for c in ("id", "title", "text"))

    def __len__(self) -> int:
        return len(self._id)

    @overload
    def __getitem__(self, i: int) -> Passage: ...
    @overload
    def __getitem__(self, i: slice) -> list[Passage]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return Passage(self._id[i].as_py(), self._title[i].as_py(), self._text[i].as_py())


def _write_passages(passages: Sequence[Passage], path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([p.id for p in passages], pa.string()),
            "title": pa.array([p.title for p in passages], pa.string()),
            "text": pa.array([p.text for p in passages], pa.string()),
        }
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def index_id(meta: dict) -> str:
    """A short content address of what decides the results: kind, corpus, parameters, encoder weights."""
    key = {k: meta.get(k) for k in ("kind", "format", "params")}
    key["corpus"] = meta["corpus"]["sha256"]
    key["encoder"] = (meta.get("encoder") or {}).get("sha256")
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise RetrievalIndexError(
            f"{directory} is not an index directory (no meta.json); build one with `igpo index build`"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise RetrievalIndexError(f"{directory}: index format {meta.get('format')!r}, this version reads {FORMAT}")
    return meta


def build_index(
    corpus: str | Path,
    kind: Kind,
    out: str | Path,
    *,
    encoder: str | None = None,
    faiss_factory: str = "Flat",
    batch_size: int = 64,
    device: str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """Build a `kind` index of the corpus JSONL into directory `out`; returns its metadata."""
    out = Path(out)
    if (out / "meta.json").exists() and not overwrite:
        raise RetrievalIndexError(f"{out} already holds an index; pass overwrite=True (--overwrite) to replace it")
    corpus = Path(corpus)
    passages = load_corpus(corpus)
    meta: dict = {
        "format": FORMAT,
        "kind": kind,
        "corpus": {"path": str(corpus.resolve()), "sha256": file_sha256(corpus), "n_passages": len(passages)},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # an interrupted rebuild must not look like a finished index
    if kind == "bm25":
        from igpo.retrieval.bm25 import BM25Retriever

        log.info("indexing %d passages with BM25", len(passages))
        retriever = BM25Retriever(passages)
        shutil.rmtree(out / "bm25", ignore_errors=True)
        retriever.save(out / "bm25")
        meta["params"] = retriever.params
    elif kind == "dense":
        import faiss

        from igpo.retrieval import dense

        model_dir = dense.resolve_encoder(encoder)
        model = dense.load_encoder(model_dir, device)
        meta["encoder"] = {
            "name": encoder or dense.DEFAULT_ENCODER,
            "sha256": dense.encoder_fingerprint(model_dir),
            "dim": model.get_embedding_dimension(),
            "max_seq_length": model.max_seq_length,
        }
        meta["params"] = {"faiss_factory": faiss_factory, "metric": "inner_product", "normalized": True}
        vectors = _embed_resumable(model, passages, out / ".embeddings", meta, batch_size, show_progress)
        faiss.write_index(dense.build_faiss(vectors, faiss_factory), str(out / "dense.faiss"))
        shutil.rmtree(out / ".embeddings")
    else:
        raise RetrievalIndexError(f"unknown index kind {kind!r} (bm25 or dense)")
    _write_passages(passages, out / "passages.arrow")
    meta["index_id"] = index_id(meta)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _embed_resumable(model, passages, chunk_dir: Path, meta: dict, batch_size: int, show_progress: bool) -> np.ndarray:
    """Embed in chunks saved as they finish, so an interrupted build (minutes on a CPU) resumes where it stopped."""
    from igpo.progress import Progress
    from igpo.retrieval.dense import embed, passage_text

    chunk = 4096
    key = {"corpus": meta["corpus"]["sha256"], "encoder": meta["encoder"]["sha256"], "chunk": chunk}
    key_file = chunk_dir / "key.json"
    if chunk_dir.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != key):
        shutil.rmtree(chunk_dir)  # chunks of another corpus or encoder
    chunk_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key))
    parts = []
    progress = Progress("index: embedding", len(passages), unit="passage") if show_progress else None
    try:
        for start in range(0, len(passages), chunk):
            path = chunk_dir / f"{start:09d}.npy"
            if path.exists():
                vectors = np.load(path)
            else:
                vectors = embed(model, [passage_text(p) for p in passages[start : start + chunk]], batch_size)
                np.save(path.with_suffix(".tmp.npy"), vectors)
                path.with_suffix(".tmp.npy").replace(path)
            parts.append(vectors)
            if progress is not None:
                progress.update(start + len(vectors))
    finally:
        if progress is not None:
            progress.close()
    return np.concatenate(parts)


def load_index(
    directory: str | Path, *, corpus: str | Path | None = None, encoder: str | None = None, device: str = "cpu"
) -> Retriever:
    """The retriever of a saved index, memory-mapped. With `corpus`, the index must have been built from it.

    `encoder` overrides where the dense encoder is loaded from (the index records its name); its weights must be
    those the index was built with.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    if corpus is not None:
        check_corpus(meta, corpus, directory)
    passages = ArrowPassages(directory / "passages.arrow")
    if len(passages) != meta["corpus"]["n_passages"]:
        raise RetrievalIndexError(
            f"{directory}: passages.arrow holds {len(passages)} passages, meta.json says {meta['corpus']['n_passages']}"
        )
    if meta["kind"] == "bm25":
        from igpo.retrieval.bm25 import BM25Retriever

        retriever = BM25Retriever.load(directory / "bm25", passages, stemmer=meta["params"]["stemmer"])
    elif meta["kind"] == "dense":
        import faiss

        from igpo.retrieval import dense

        model_dir = dense.resolve_encoder(encoder or meta["encoder"]["name"])
        sha = dense.encoder_fingerprint(model_dir)
        if sha != meta["encoder"]["sha256"]:
            raise RetrievalIndexError(
                f"{directory} was built with encoder {meta['encoder']['name']!r} (weights sha256 "
                f"{meta['encoder']['sha256'][:12]}…), but {model_dir} holds other weights (sha256 {sha[:12]}…)"
            )
        index = faiss.read_index(str(directory / "dense.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        retriever = dense.DenseRetriever(passages, dense.load_encoder(model_dir, device), index)
    else:
        raise RetrievalIndexError(f"{directory}: unknown index kind {meta['kind']!r}")
    retriever.meta = meta
    return retriever


def check_corpus(meta: dict, corpus: str | Path, directory: str | Path) -> None:
    """Refuse an index built from another corpus than `corpus`, saying which."""
    sha = file_sha256(corpus)
    built = meta["corpus"]
    if sha != built["sha256"]:
        raise RetrievalIndexError(
            f"index {directory} was built from another corpus: {built['path']} (sha256 {built['sha256'][:12]}…, "
            f"{built['n_passages']} passages), not {corpus} (sha256 {sha[:12]}…); rebuild it with "
            f"`igpo index build --corpus {corpus} --kind {meta['kind']} --out {directory}`"
        )
