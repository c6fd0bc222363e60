"""The dashboard's web application (Starlette): JSON API, server-sent events, static page.

Read-only except two routes, which only accept same-origin JSON requests:
``POST /api/errors/retry`` marks error-queue entries due (`ErrorQueue.make_due`) and retries
them at once (`Pillow.retry_errors`) so the operator sees the outcome; ``POST
/api/reports/enable`` lifts a data source's quarantine as ``changefeed reports enable`` does.

Every string the API returns that can quote a URL (log and state URLs, status notes and
errors, error-queue messages, stubs and tracebacks, history reasons) passes through
`changefeed.status.redacted`: a dashboard is shown on screens and shared in screenshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from changefeed.identifiers import InvalidValueError, int64
from changefeed.report_status import NotQuarantinedError, enable_data_source, reports_or_error
from changefeed.status import orphaned_errors, redacted
from changefeed.web.live import LiveChanges
from changefeed.web.monitor import PillowMonitor
from changefeed.web.security import AccessMiddleware, SecurityHeadersMiddleware, same_origin

if TYPE_CHECKING:
    from changefeed.app import App
    from changefeed.pillow import Pillow

STATIC = Path(__file__).parent / "static"
PING_SECONDS = 10.0
MAX_LIMIT = 1000


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def _int(request: Request, name: str, default: int, maximum: int = MAX_LIMIT) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    return max(1, min(maximum, value))


class BadRequest(ValueError):
    pass


def _error_id(value: object) -> int:
    """An error-queue id as the queue stores it (BIGINT): anything else is the client's
    mistake (400), not an overflow in the database driver (500)."""
    try:
        return int64(value, "error id", 1)
    except InvalidValueError as exc:
        raise BadRequest(str(exc)) from None


class Dashboard:
    """State shared by the routes: the app, the status monitor and the live change stream."""

    def __init__(
        self,
        app: App,
        pillow_names: Sequence[str] | None = None,
        *,
        sample_interval: float = 2.0,
        live_topics: Sequence[str] | None = None,
    ) -> None:
        self.app = app
        self.pillow_names = list(pillow_names) if pillow_names else app.pillow_names
        self.monitor = PillowMonitor(app, self.pillow_names, interval=sample_interval)
        self.live = LiveChanges(app.backend, live_topics)
        self._retry_pillows: dict[str, Pillow] = {}
        self._retry_lock = threading.Lock()
        self.stopping = asyncio.Event()

    # -- pages and reads ---------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def pillows(self, request: Request) -> Response:
        return JSON(
            {
                "pillows": self.monitor.snapshot(),
                "interval": self.monitor.interval,
                "log": redacted(self.app.log_url),
                "state": redacted(self.app.state_url),
            }
        )

    def errors(self, request: Request) -> Response:
        pillow = request.query_params.get("pillow") or None
        status = request.query_params.get("status") or None
        if pillow is not None and pillow not in self.pillow_names:
            return JSON({"error": f"unknown pillow {pillow!r}"}, 404)
        limit = _int(request, "limit", 100)
        records = self.app.error_queue.list(pillow=pillow, status=status, limit=limit)
        counts = {name: self.app.error_queue.counts(name) for name in self.pillow_names}
        return JSON(
            {
                "errors": redacted([r.to_dict() for r in records]),
                "counts": counts,
                "orphaned": orphaned_errors(self.app),
            }
        )

    def error_detail(self, request: Request) -> Response:
        record = self.app.error_queue.get(_error_id(request.path_params["error_id"]))
        if record is None or record.pillow not in self.pillow_names:
            return JSON({"error": "no such error entry"}, 404)
        return JSON(redacted(record.to_dict(detail=True)))

    def reports(self, request: Request) -> Response:
        """The data sources of every report pillow (`changefeed.report_status`)."""
        found: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        for name in self.pillow_names:
            try:
                pillow = self.monitor.pillow(name)
            except Exception as exc:  # noqa: BLE001 - the pillows section shows it too
                failed[name] = redacted(f"{type(exc).__name__}: {exc}")
                continue
            statuses = reports_or_error(pillow)
            if isinstance(statuses, str):
                failed[name] = statuses
            else:
                found += [st.to_dict() for st in statuses]
        return JSON({"reports": found, "errors": failed})

    def checkpoint_history(self, request: Request) -> Response:
        pillow = request.query_params.get("pillow") or None
        limit = _int(request, "limit", 50)
        entries = [
            e
            for e in self.app.checkpoints.history(pillow, limit=limit)
            if e.pillow in self.pillow_names
        ]
        return JSON({"history": redacted([e.to_dict() for e in entries])})

    # -- the writes ----------------------------------------------------------------------

    async def retry(self, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        ids = body.get("ids")
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            return JSON({"error": "give 'ids': a non-empty list of error ids"}, 400)
        try:
            ids = [_error_id(i) for i in ids]
        except BadRequest as exc:
            return JSON({"error": f"ids: {exc}"}, 400)
        return JSON(await asyncio.to_thread(self._retry, ids[:MAX_LIMIT]))

    def _retry(self, ids: list[int]) -> dict[str, Any]:
        queue = self.app.error_queue
        records = [r for r in (queue.get(i) for i in ids) if r is not None]
        by_pillow: dict[str, list[int]] = {}
        for r in records:
            if r.pillow in self.pillow_names:
                by_pillow.setdefault(r.pillow, []).append(r.id)
        results: dict[str, Any] = {}
        with self._retry_lock:
            for name, pillow_ids in by_pillow.items():
                queue.make_due(pillow=name, ids=pillow_ids)
                pillow = self._retry_pillows.get(name)
                if pillow is None:
                    pillow = self._retry_pillows[name] = self.app.get_pillow(name)
                # Exactly the rows asked for, not every due entry of the pillow.
                ok, failed = pillow.runner.retry_errors(ids=pillow_ids)
                results[name] = {"resolved": ok, "failed": failed}
        still = [i for i in ids if queue.get(i) is not None]
        return {"results": results, "resolved": [i for i in ids if i not in still], "open": still}

    async def enable(self, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        pillow, name = body.get("pillow"), body.get("data_source")
        if not isinstance(pillow, str) or not isinstance(name, str) or not name:
            return JSON({"error": "give 'pillow' and 'data_source' names"}, 400)
        if pillow not in self.pillow_names:
            return JSON({"error": f"unknown pillow {pillow!r}"}, 404)
        try:
            await asyncio.to_thread(self._enable, pillow, name)
        except KeyError:
            return JSON({"error": f"no data source {name!r} in pillow {pillow!r}"}, 404)
        except NotQuarantinedError as exc:
            return JSON({"error": str(exc)}, 409)
        return JSON({"enabled": name, "pillow": pillow})

    def _enable(self, pillow: str, name: str) -> None:
        enable_data_source(self.monitor.pillow(pillow), name)

    # -- live changes (server-sent events) ------------------------------------------------

    async def stream(self, request: Request) -> Response:
        sub = self.live.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\nevent: hello\ndata: {}\n\n"
                while not self.stopping.is_set():
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), PING_SECONDS)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": ping\n\n"
                        continue
                    if event is None:
                        return
                    yield b"event: change\ndata: " + orjson.dumps(event) + b"\n\n"
            finally:
                self.live.unsubscribe(sub)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- lifecycle -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.stopping = asyncio.Event()
        self.monitor.start()
        self.live.start()
        try:
            yield
        finally:
            self.stopping.set()
            await asyncio.to_thread(self.live.stop)
            await asyncio.to_thread(self.monitor.stop)


async def _json_body(request: Request) -> dict[str, Any] | Response:
    """The JSON object a state-changing request sends, or the response refusing it: only
    a page of this dashboard (same origin) may send one, and only as JSON (a cross-site
    form cannot send that content type without a preflight)."""
    if not same_origin(request):
        return JSON({"error": "cross-origin request refused"}, 403)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSON({"error": "send JSON"}, 415)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return JSON({"error": "invalid JSON"}, 400)
    if not isinstance(body, dict):
        return JSON({"error": "send a JSON object"}, 400)
    return body


async def _bad_request(request: Request, exc: Exception) -> Response:
    return JSON({"error": str(exc)}, 400)


def create_app(
    app: App,
    *,
    token: str | None = None,
    pillow_names: Sequence[str] | None = None,
    sample_interval: float = 2.0,
    live_topics: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard as an ASGI app (serve it with uvicorn; see ``changefeed dashboard``)."""
    dash = Dashboard(app, pillow_names, sample_interval=sample_interval, live_topics=live_topics)
    routes = [
        Route("/", dash.index),
        Route("/api/pillows", dash.pillows),
        Route("/api/errors", dash.errors),
        Route("/api/errors/retry", dash.retry, methods=["POST"]),
        Route("/api/errors/{error_id:int}", dash.error_detail),
        Route("/api/checkpoints/history", dash.checkpoint_history),
        Route("/api/reports", dash.reports),
        Route("/api/reports/enable", dash.enable, methods=["POST"]),
        Route("/api/stream", dash.stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    web = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(AccessMiddleware, token=token),
        ],
        lifespan=dash.lifespan,
        exception_handlers={BadRequest: _bad_request},
    )
    web.state.dashboard = dash
    return web
