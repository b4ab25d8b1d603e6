"""The FastAPI app of `lmlab serve`: OpenAI's completions and chat endpoints, /metrics, and the playground.

Every request is validated (`schema`), turned into `SamplingParams`, and
queued on the `Scheduler`, whose thread batches all running requests. Errors
are OpenAI's JSON (`{"error": {...}}`) with a 4xx status; nothing a client
sends reaches it as a 5xx or a stack trace.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmlab.errors import LmlabError
from lmlab.serve import openai_format as fmt
from lmlab.serve.api import Api
from lmlab.serve.limits import BodyLimit, RequestCounter
from lmlab.serve.metrics import ServeMetrics
from lmlab.serve.openai_format import ApiError
from lmlab.serve.scheduler import Scheduler

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
    api = Api(engine, scheduler, model_name, api_key)
    app = FastAPI(title="lmlab serve", version="1", docs_url="/docs", redoc_url=None)
    app.state.scheduler, app.state.metrics, app.state.engine = scheduler, metrics, engine
    app.router.on_shutdown.append(scheduler.close)
    _error_handlers(app)
    key = [Depends(api.authorized)]
    app.get("/health")(api.health)
    app.get("/metrics")(metrics.page)
    app.get("/v1/models", dependencies=key)(api.models)
    app.post("/v1/completions", dependencies=key)(api.completions)
    app.post("/v1/chat/completions", dependencies=key)(api.chat)
    app.get("/", response_class=HTMLResponse, include_in_schema=False)(_playground_page)
    app.post("/playground/next", dependencies=key)(api.next_token)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(RequestCounter, metrics=metrics)  # added last: outermost, so it sees every answer
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, never a traceback."""

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


async def _playground_page() -> HTMLResponse:
    if not PLAYGROUND.is_file():
        return HTMLResponse("<p>lmlab serve: the playground page is missing from this install.</p>")
    return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))


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
