"""The console's HTTP server (aiohttp, 127.0.0.1 only): the page, the State JSON, its
event stream and the controls (CONTRACT.md; specs/console.allium).

- ``GET /``, ``GET /static/*``: the page (console/static/), no token: they hold no
  secret and can do nothing.
- every ``/api/*`` route: the run's token, as ``Authorization: Bearer <token>`` or (for
  EventSource, which cannot send headers) ``?token=<token>``; 401 ``missing_token`` or
  ``bad_token`` otherwise, compared in constant time, never echoed. aiohttp's access
  log is off: a query string holding the token is never written down.
- ``GET /api/state``, ``GET /api/stream`` (``event: state`` every STREAM_EVERY_S),
  ``POST /api/nodes/{name}/{action}``, ``POST /api/stop``, ``POST /api/rate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from console.stack import RATE_MAX, RATE_MIN, ControlError

log = logging.getLogger("docket.console")

STATIC = Path(__file__).resolve().parent / "static"
STREAM_EVERY_S = 0.5
MAX_BODY_BYTES = 4096  # a control's body is a few bytes
PLACEHOLDER = (b"<!doctype html><title>docket console</title><p>The console's page (console/static/index.html) "
               b"is not installed; the API under /api/ works.</p>")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": code, "message": message}, status)


def token_error(request: web.Request, token: str) -> web.Response | None:
    """None when the request carries ``token`` (header or query), else the 401."""
    header = request.headers.get("Authorization")
    given = request.query.get("token")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _error(401, "bad_token", "the Authorization header must be 'Bearer <token>'")
        given = value.strip()
    if given is None:
        return _error(401, "missing_token", "this needs the console's token: 'Authorization: Bearer <token>' "
                                            "or ?token=<token> (the page has it in its URL after #token=)")
    if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        return _error(401, "bad_token", "that is not this console's token (it is printed when the console starts)")
    return None


def make_app(controller, state: Callable[[], dict], set_rate: Callable[[float], None], token: str,
             stop: Callable[[], None], static_dir: Path = STATIC) -> web.Application:
    """The console's aiohttp application. ``controller``: console/stack.py Controller;
    ``state()``: the State JSON (console/monitor.py Monitor.state); ``set_rate(n)``:
    the workload's rate; ``stop()``: ask the console to stop everything and exit."""

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path.startswith("/api/") or request.path == "/api":
            refused = token_error(request, token)
            if refused is not None:
                return refused
        return await handler(request)

    async def index(request: web.Request) -> web.StreamResponse:
        page = static_dir / "index.html"
        if page.is_file():
            return web.FileResponse(page, headers={"Cache-Control": "no-store"})
        return web.Response(body=PLACEHOLDER, content_type="text/html")

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (static_dir / name).resolve()
        if not path.is_relative_to(static_dir.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    async def get_state(request: web.Request) -> web.Response:
        return _json(state())

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the page went away
            while True:
                await resp.write(b"event: state\ndata: " + orjson.dumps(state()) + b"\n\n")
                await asyncio.sleep(STREAM_EVERY_S)  # the stream's period
        return resp

    async def body_of(request: web.Request) -> object:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise ControlError(400, "bad_json", f"the body is over {MAX_BODY_BYTES} bytes")
        if not raw.strip():
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ControlError(400, "bad_json", "the body is not JSON") from None

    async def control(request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        try:
            node = await controller.act(name, action, await body_of(request))
        except ControlError as exc:
            return _error(exc.status, exc.code, exc.message)
        return _json({"ok": True, "node": node})

    async def post_stop(request: web.Request) -> web.Response:
        controller.note("stop asked for on the page")
        asyncio.get_running_loop().call_soon(stop)  # after this answer is on its way
        return _json({"ok": True})

    async def post_rate(request: web.Request) -> web.Response:
        try:
            body = await body_of(request)
        except ControlError as exc:
            return _error(exc.status, exc.code, exc.message)
        rate = body.get("rate") if isinstance(body, dict) else None
        if type(rate) not in (int, float) or not RATE_MIN <= rate <= RATE_MAX:
            return _error(400, "bad_rate", f'the body must be {{"rate": N}} with N from {RATE_MIN} to {RATE_MAX} '
                                           "(events/s)")
        set_rate(rate)
        controller.note(f"rate set to {rate:g} events/s")
        return _json({"ok": True, "rate": rate})

    async def api_unknown(request: web.Request) -> web.Response:
        return _error(404, "not_found", f"no {request.method} {request.path}")

    app = web.Application(middlewares=[auth], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name:.+}", static)
    app.router.add_get("/api/state", get_state)
    app.router.add_get("/api/stream", stream)
    app.router.add_post("/api/nodes/{name}/{action}", control)
    app.router.add_post("/api/stop", post_stop)
    app.router.add_post("/api/rate", post_rate)
    app.router.add_route("*", "/api/{tail:.*}", api_unknown)
    return app


async def serve(app: web.Application, port: int) -> web.AppRunner:
    """Serve ``app`` on 127.0.0.1:``port`` (no other address), without an access log,
    with the REST API's request handler and server log (app/api.py AppRunner,
    SERVER_LOG): a request line aiohttp cannot parse (a raw non-ASCII byte in the query)
    is one WARNING line that shows nothing of the request. aiohttp's own handler logged
    ERROR with a traceback quoting the request line, ``?token=`` included (the tenth
    fresh-user trial)."""
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def make_runner(app: web.Application) -> web.AppRunner:
    """The AppRunner :func:`serve` starts (tests serve it on a port of their own)."""
    from app.api import SERVER_LOG, AppRunner

    return AppRunner(app, access_log=None, logger=SERVER_LOG, handle_signals=False, shutdown_timeout=1.0)
