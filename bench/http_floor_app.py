"""The HTTP floor's server: a plain aiohttp app doing the least an HTTP front of an
event pipeline does per request - route it, read the body, parse the JSON, answer
with a small JSON body - on docket's API settings (the same aiohttp, body limit and
event loop; no access log). Whatever docket's REST API adds (authentication, the
envelope's and the domain's checks, the idempotency index, the produce, the wait for
the agreed result, metrics) costs on top of this. Measured by ``floor`` in
bench/http_load.py (`make bench`'s HTTP measurement).

    .venv/bin/python -m bench.http_floor_app --port 8099

Answers ``POST /v1/events`` with 200 ``{"status": "ok"}`` (400 for a body that is not
JSON) and ``GET /healthz`` with 200.
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

from app.api import MAX_BODY_BYTES

OK = orjson.dumps({"status": "ok"})


async def post_event(request: web.Request) -> web.Response:
    try:
        orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return web.json_response({"error": f"not JSON: {exc}"}, status=400)
    return web.Response(body=OK, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=OK, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/events", post_event)
    app.router.add_get("/healthz", healthz, allow_head=False)
    return app


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1 to 65535)")
    return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="listen address [127.0.0.1]")
    ap.add_argument("--port", type=port_number, required=True, help="listen port, 1 to 65535")
    args = ap.parse_args()
    url = f"http://{args.host}:{args.port}"
    try:
        web.run_app(create_app(), host=args.host, port=args.port, access_log=None,
                    print=lambda _banner: print(f"http floor app listening on {url} (Ctrl-C stops it)", flush=True))
    except OSError as exc:  # address in use, no such host or address: say so, no traceback
        ap.exit(1, f"http_floor_app: cannot listen on {url}: {exc}\n")


if __name__ == "__main__":
    main()
