"""The FastAPI app of `lmlab serve`: OpenAI's completions and chat endpoints, /metrics, and the playground.

Every request is validated (`schema`), turned into `SamplingParams`, and
queued on the `Scheduler`, whose thread batches all running requests. Errors
are OpenAI's JSON (`{"error": {...}}`) with a 4xx status; nothing a client
sends reaches it as a 5xx or a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmlab.data.chat import END_OF_TURN, render
from lmlab.errors import LmlabError
from lmlab.infer.sampling import SamplingParams
from lmlab.serve import openai_format as fmt
from lmlab.serve.limits import BodyLimit, RequestCounter
from lmlab.serve.metrics import ServeMetrics
from lmlab.serve.openai_format import ApiError
from lmlab.serve.playground import next_token_view, prompt_logprobs
from lmlab.serve.scheduler import Busy, Job, Scheduler
from lmlab.serve.schema import ChatRequest, CompletionRequest, NextTokenRequest
from lmlab.serve.streams import chat_stream, completion_stream, sse

log = logging.getLogger("lmlab.serve")
PLAYGROUND = Path(__file__).parent / "static" / "playground.html"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return f"the body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", None
    where = ".".join(loc)
    return (f"{where}: {err['msg']}" if where else err["msg"]), (loc[0] if loc else None)


def build_app(engine: Any, model_name: str = "lmlab", api_key: str | None = None, max_waiting: int = 64,
              max_rows: int = 256, max_body: int = 1 << 20) -> FastAPI:
    """The app serving `engine` as model `model_name`; `api_key` (if set) is required on /v1 and /playground."""
    metrics = ServeMetrics()
    scheduler = Scheduler(engine, metrics, max_waiting=max_waiting, max_rows=max_rows)
    app = FastAPI(title="lmlab serve", version="1", docs_url="/docs", redoc_url=None)
    app.state.scheduler, app.state.metrics, app.state.engine = scheduler, metrics, engine
    app.router.on_shutdown.append(scheduler.close)
    ctx = engine.cfg.max_seq_len
    eot = engine.tok.token_to_id(END_OF_TURN)
    decode = engine.tok.decode

    # -- errors: always OpenAI's shape, never a traceback ----------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in kind:
            message = f"send the body as JSON with 'Content-Type: application/json' (got {kind or 'none'!r})"
        return JSONResponse(fmt.error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(fmt.error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(fmt.error_body("internal error", "server_error"), status_code=500)

    async def authorized(request: Request) -> None:  # async: a plain def would hop to a worker thread
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {model_name!r}",
                           param="model", code="model_not_found")

    def encode(prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list) and any(t >= engine.cfg.vocab_size for t in prompt):
            raise ApiError(400, f"prompt token ids must be < the vocabulary size {engine.cfg.vocab_size}",
                           param="prompt")
        try:
            return engine.encode(prompt)
        except LmlabError as e:
            raise ApiError(400, str(e), param="prompt", code="context_length_exceeded") from None

    def room(ids: list[int], max_tokens: int | None, param: str) -> int:
        """max_tokens, or what the context leaves; an error when the prompt and max_tokens do not fit."""
        left = ctx - len(ids)
        if max_tokens is None:
            if left < 1:
                raise ApiError(400, f"the prompt has {len(ids)} tokens and leaves no room in this model's "
                                    f"{ctx}-token context", param="messages", code="context_length_exceeded")
            return left
        if max_tokens > left:
            raise ApiError(400, f"this model's context is {ctx} tokens: a {len(ids)}-token prompt leaves room for "
                                f"{max(left, 0)}, but {param} is {max_tokens}", param=param,
                           code="context_length_exceeded")
        return max_tokens

    def params(req, max_tokens: int, logprobs: bool, top: int, stop_ids: list[int]) -> SamplingParams:
        return SamplingParams(temperature=req.temperature, top_k=max(req.top_k, 0), top_p=req.top_p,
                              min_p=req.min_p, repetition_penalty=req.repetition_penalty,
                              presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                              seed=req.seed, max_new_tokens=max_tokens, stop=req.stops(), stop_token_ids=stop_ids,
                              n=req.n, logprobs=logprobs, top_logprobs=top, ignore_eos=req.ignore_eos)

    def submit(prompt_ids: list[list[int]], plist: list[SamplingParams], stream: bool) -> Job:
        try:
            return scheduler.submit(prompt_ids, plist, stream)
        except Busy as e:
            raise ApiError(429, f"the server is busy ({e}); retry shortly", "rate_limit_error") from None

    async def finished(job: Job, request: Request) -> None:
        """Wait for a non-streamed job; cancel it when the client goes away."""
        while True:
            try:
                item = await asyncio.wait_for(job.queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    scheduler.cancel(job)
                    raise ApiError(499, "the client closed the request") from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item if isinstance(item, ApiError) else ApiError(500, f"generation failed: {item}",
                                                                       "server_error")

    # -- routes --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "running": len(scheduler.jobs),
                "waiting": len(scheduler.waiting)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "lmlab",
                                            "max_model_len": ctx}]}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        prompts = req.prompts()
        ids = [encode(p) for p in prompts]
        plist = [params(req, room(i, req.max_tokens, "max_tokens"), req.logprobs is not None, req.logprobs or 0, [])
                 for i in ids]
        echoes = None
        if req.echo:
            echoes = [await asyncio.to_thread(_echo, engine, p, i, req.logprobs) for p, i in zip(prompts, ids)]
        job = submit(ids, plist, req.stream)
        cid, created = fmt.new_id("cmpl"), fmt.now()
        if req.stream:
            return sse(completion_stream(job, req, cid, created, model_name, decode, echoes), job, scheduler)
        await finished(job, request)
        n = req.n
        choices = [fmt.completion_choice(r, k, decode, req.logprobs, echoes[k // n] if echoes else None)
                   for k, r in enumerate(job.rows)]
        return {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                "choices": choices, "usage": fmt.usage(job.prompt_tokens, job.completion_tokens)}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(req: ChatRequest, request: Request):
        check_model(req.model)
        try:
            text = render([{"role": m.role, "content": m.content} for m in req.messages])
        except LmlabError as e:
            raise ApiError(400, str(e), param="messages") from None
        ids = encode(text)
        wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        top = req.top_logprobs or 0
        if top and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        p = params(req, room(ids, wanted, "max_tokens"), req.logprobs, top, [eot] if eot is not None else [])
        job = submit([ids], [p], req.stream)
        cid, created = fmt.new_id("chatcmpl"), fmt.now()
        if req.stream:
            return sse(chat_stream(job, req, cid, created, model_name, decode), job, scheduler)
        await finished(job, request)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [fmt.chat_choice(r, k, decode, req.logprobs) for k, r in enumerate(job.rows)],
                "usage": fmt.usage(job.prompt_tokens, job.completion_tokens)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        if not PLAYGROUND.is_file():
            return HTMLResponse("<p>lmlab serve: the playground page is missing from this install.</p>")
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.post("/playground/next", dependencies=[Depends(authorized)])
    async def next_token(req: NextTokenRequest) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(next_token_view, engine, req)
        except LmlabError as e:
            raise ApiError(400, str(e), param="prompt") from None

    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(RequestCounter, metrics=metrics)  # added last: outermost, so it sees every answer
    return app


def _echo(engine: Any, prompt: str | list[int], ids: list[int], k: int | None) -> dict[str, Any]:
    """What `echo` puts before the completion: the prompt's text and, when asked, its tokens' logprobs."""
    text = prompt if isinstance(prompt, str) else engine.tok.decode(ids)
    lps, tops = prompt_logprobs(engine, ids, k or 0)
    return {"text": text, "ids": list(ids), "logprobs": [None, *lps], "tops": [None, *tops] if k else None}


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, str]:
    """Run `app` under uvicorn in a daemon thread (tests, benchmarks); returns (server, base URL).

    Stop it with `server.should_exit = True`."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(2000):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.005)
    if not server.started:
        raise LmlabError(f"the server did not start on {host}:{port}")
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://{host}:{bound}"


def api_key_from_env(given: str | None) -> str | None:
    return given or os.environ.get("LMLAB_API_KEY") or None
