"""A retrieval server compatible with Search-R1's `retrieval_server.py`, over any `Retriever`.

`POST /retrieve {"queries": [...], "topk": k, "return_scores": bool}` answers
`{"result": [[doc, ...], ...]}` with `doc = {"id", "contents"}` (`contents = "title\\ntext"`), or
`{"document": doc, "score": s}` when `return_scores`. Documents also carry `title` and `text` (clients that do not
know them ignore them; ours reads them, so a title-less passage whose text holds a newline survives the trip), and
the answer names the `index_id`. `GET /health` says what is served.

Requests are bounded (number of queries, query length, topk, body size); a request past a bound gets a 4xx
that names the bound. Concurrent requests are searched together: while one batch is searched, the next
requests queue and go into the next batch, so a busy server makes fewer, larger calls into the index.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from igpo.retrieval.base import Hit, Retriever

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_queries: int = 256  # queries in one request
    max_query_chars: int = 4096
    max_topk: int = 100
    max_body_bytes: int = 1 << 20
    default_topk: int = 3  # when a request gives none, as Search-R1's server does
    max_batch_queries: int = 1024  # queries searched in one call into the index


class RetrieveRequest(BaseModel):
    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


class _Batcher:
    """Queues searches and runs them in batches on one worker thread (the index is CPU-bound anyway)."""

    def __init__(self, retriever: Retriever, max_batch_queries: int):
        self.retriever = retriever
        self.max_batch_queries = max_batch_queries
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stats = {"requests": 0, "queries": 0, "batches": 0, "errors": 0}

    async def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((queries, topk, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            n = len(batch[0][0])
            while n < self.max_batch_queries and not self.queue.empty():
                batch.append(self.queue.get_nowait())
                n += len(batch[-1][0])
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["queries"] += n
            try:
                results = await asyncio.to_thread(self._search, [(q, k) for q, k, _ in batch])
            except Exception as e:  # the requests of this batch fail; the server stays up
                log.exception("search failed")
                self.stats["errors"] += 1
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, _, future), hits in zip(batch, results):
                if not future.done():  # done = cancelled: the client went away
                    future.set_result(hits)

    def _search(self, requests: list[tuple[list[str], int]]) -> list[list[list[Hit]]]:
        # One call per distinct topk, so that every request gets exactly what searching it alone would give.
        by_topk: dict[int, list[int]] = defaultdict(list)
        for i, (_, k) in enumerate(requests):
            by_topk[k].append(i)
        results: list = [None] * len(requests)
        for k, members in by_topk.items():
            hits = self.retriever.search([q for i in members for q in requests[i][0]], k)
            start = 0
            for i in members:
                n = len(requests[i][0])
                results[i] = hits[start : start + n]
                start += n
        return results


def _document(hit: Hit) -> dict:
    contents = f"{hit.title}\n{hit.text}" if hit.title else hit.text
    return {"id": hit.id, "contents": contents, "title": hit.title, "text": hit.text}


def create_app(
    retriever: Retriever, *, index_info: dict | None = None, api_key: str | None = None, limits: Limits = Limits()
) -> FastAPI:
    """The FastAPI app serving `retriever`. With `api_key`, `/retrieve` needs `Authorization: Bearer <key>`
    (or `X-API-Key: <key>`); `/health` stays open so that load balancers and clients can probe it."""
    batcher = _Batcher(retriever, limits.max_batch_queries)
    index_info = dict(index_info or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="igpo retrieval", lifespan=lifespan)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send `Authorization: Bearer <key>`)")

    async def read_body(request: Request) -> bytes:
        too_big = HTTPException(413, f"request body exceeds max_body_bytes={limits.max_body_bytes}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise too_big
        return bytes(body)

    def parse(body: bytes) -> RetrieveRequest:
        try:
            req = RetrieveRequest.model_validate_json(body)
        except ValidationError as e:
            raise HTTPException(422, f"bad request: {e.errors(include_url=False, include_input=False)}") from None
        if len(req.queries) > limits.max_queries:
            raise HTTPException(413, f"too many queries: {len(req.queries)} > max_queries={limits.max_queries}")
        for i, q in enumerate(req.queries):
            if len(q) > limits.max_query_chars:
                raise HTTPException(
                    413, f"query {i} has {len(q)} characters > max_query_chars={limits.max_query_chars}"
                )
        if req.topk is None:
            req.topk = limits.default_topk
        if not 1 <= req.topk <= limits.max_topk:
            raise HTTPException(422, f"topk={req.topk} is out of range: 1 <= topk <= max_topk={limits.max_topk}")
        return req

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "index": index_info, "limits": limits.__dict__, "stats": dict(batcher.stats)}

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        check_key(request)
        req = parse(await read_body(request))
        try:
            hits = await batcher.search(req.queries, req.topk)
        except Exception as e:  # noqa: BLE001 - any index failure is this request's 500, not the server's end
            raise HTTPException(500, f"search failed: {type(e).__name__}: {e}") from None
        if req.return_scores:
            result = [[{"document": _document(h), "score": h.score} for h in row] for row in hits]
        else:
            result = [[_document(h) for h in row] for row in hits]
        return JSONResponse({"result": result, "index_id": index_info.get("index_id")})

    return app


def index_info(meta: dict) -> dict:
    """What `/health` says about a saved index (not the corpus path: it may be private)."""
    info = {k: meta[k] for k in ("index_id", "kind", "params") if k in meta}
    info["n_passages"] = meta["corpus"]["n_passages"]
    info["corpus_sha256"] = meta["corpus"]["sha256"]
    if meta.get("encoder"):
        info["encoder"] = meta["encoder"]["name"]
    return info


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
