"""The REST API: `docket api`. aiohttp over :class:`app.client.DocketClient` (one producer
and one results consumer per process, whatever the number of requests in flight).

    POST /v1/events                      submit; 200 applied, 409 rejected, 202 pending, ...
    GET  /v1/events/{idempotency_key}    pending / decided / diverged (404: unknown)
    GET  /v1/entities/{type}/{id}        agreed state of entity "{type}:{id}"
                                         (the domain kit's entity_pattern, e.g. stock:{warehouse}:{sku})
    GET  /healthz /readyz /metrics /openapi.json      (no credentials needed)

Every /v1 request needs ``Authorization: Bearer <token>`` with a token from
DOCKET_API_TOKENS. Errors are JSON ``{"error": code, "message": ..., "errors": [{"field",
"reason", "message"}]}``. The OpenAPI document (app/openapi.py) lists every status.

The server starts even when Kafka is unreachable: it connects in the background and
retries, /readyz says why it is not ready, and a submission is refused with 503 ("not
accepted") until the connection is up. A Kafka that answers but refuses the login or
the TLS handshake (app/kafka_config.py KafkaAuthError) is not retried: `docket api`
stops and exits 2 with the message naming the setting, as the workers do.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import re
import signal
import time
from typing import Any
from urllib.parse import quote

import click
import orjson
from aiohttp import HttpVersion11, web, web_protocol
from aiohttp.http import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app import content_coding, logs, openapi
from app.canonical import NotIJson, loads_strict, shown_name, utf8_problem
from app.cli_types import ANY_PORT
from app.records import cut_detail
from app.client import (ClientNotStarted, DocketClient, KafkaUnavailable, KeyReused, KeyStatus, Submission, TopicsMissing,
                        ValidationError)
from app.ports import bindable, host_problem, port_in_use, url_host
from app.settings import ConfigError, Settings, api_tokens_absence, load, named_tokens

log = logging.getLogger("docket.api")

MAX_BODY_BYTES = 64 * 1024
CONNECT_RETRY_S = 1.0
# How long after its start the API's failed connections to Kafka are INFO, not WARNING
# (ApiServesWithoutKafka): the quiet start of every docket process
CONNECT_GRACE_S = logs.QUIET_START_S

_KEY = re.compile(openapi.KEY_PATTERN)
_ENTITY_TYPE = re.compile(openapi.ENTITY_TYPE_PATTERN)
_ENTITY_ID = re.compile(openapi.ENTITY_ID_PATTERN)
_KEY_RULE = f"1-{openapi.MAX_IDEMPOTENCY_KEY} characters of A-Z a-z 0-9 . _ ~ : @ + = -"
_REQUEST_FIELDS = ("event_name", "payload")
# Seconds; the instances' and the Clerk's stage histograms use the same bounds
# (agents/plumbing.py STAGE_BUCKETS), so the stages of one event line up.
LATENCY_BUCKETS = (.0005, .001, .0015, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .15, .2, .3,
                   .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60)

CLIENT = web.AppKey("client", DocketClient)
METRICS = web.AppKey("metrics", object)
CONFIG = web.AppKey("config", dict)


class StartRefused:
    """Set once the client's start failed in a way that retrying cannot fix (a
    ConfigError: Kafka refused the login or the TLS handshake, KafkaAuthError, or a
    setting it could not use); :func:`serve` then stops and raises ``error``."""

    def __init__(self) -> None:
        self.error: ConfigError | None = None
        self.event = asyncio.Event()

    def set(self, error: ConfigError) -> None:
        self.error = error
        self.event.set()


REFUSED = web.AppKey("refused", StartRefused)
# the authenticated client's name, on each /v1 request: the scope of its idempotency keys
CLIENT_NAME = web.RequestKey("client_name", str)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error response: ``status``, ``error`` code, a message, optional field errors."""

    def __init__(self, status: int, error: str, message: str, errors: list[dict] | None = None,
                 headers: dict | None = None, *, close: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.errors, self.headers, self.extra = errors, headers, extra
        self.close = close  # the connection is closed after the answer (what is left of it is unread)

    def response(self) -> web.Response:
        response = error_response(self.status, self.error, self.message, self.errors, self.headers, **self.extra)
        if self.close:
            response.force_close()
        return response


def json_response(status: int, body: dict, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


def error_response(status: int, error: str, message: str, errors: list[dict] | None = None,
                   headers: dict | None = None, **extra: Any) -> web.Response:
    """docket's JSON error answer. Its message and each errors[] entry's are cut at
    MAX_DETAIL characters (records.cut_detail) and a field name at 64 (canonical.shown_name):
    no answer grows with what the client sent (a domain's message may name every unknown
    member of a payload: a 65-KB body was answered with 262 KB, the seventh trial)."""
    body: dict[str, Any] = {**extra, "error": error, "message": cut_detail(message)}
    if errors:
        body["errors"] = [{**e, "field": shown_name(str(e["field"])), "message": cut_detail(str(e["message"]))}
                          if "field" in e and "message" in e else e for e in errors]
    return json_response(status, body, headers)


def _field_errors(errors) -> list[dict]:
    return [e.as_dict() for e in errors]


# The most errors[] entries one answer lists: a 44-KB body naming 5,000 unknown
# members was answered with 940 KB (the sixth fresh-user trial)
MAX_FIELD_ERRORS = 20


def _at_most(errors: list[dict], limit: int) -> list[dict]:
    """``errors`` whole up to ``limit`` entries, else the first ``limit`` - 1 and one
    entry (field "body", reason "more_errors") saying how many more there are."""
    if len(errors) <= limit:
        return errors
    more = len(errors) - (limit - 1)
    return [*errors[:limit - 1], {"field": "body", "reason": "more_errors",
                                  "message": f"and {more} more problems, not listed"}]


# --------------------------------------------------------------------------- mapping


def _position(pos) -> dict | None:
    return None if pos is None else {"partition": pos[0], "offset": pos[1]}


# The fields of a divergence record an event's JSON repeats (all but the Clerk's state).
DIVERGENCE_FIELDS = ("input", "cause", "idempotency_key", "client", "event_name", "stream_time", "named_by", "copies",
                     "decided")


def event_body(idempotency_key: str, state: str, position, result: dict | None = None,
               divergence: dict | None = None) -> dict:
    """The JSON of an event (schema Event in app/openapi.py)."""
    body: dict[str, Any] = {"idempotency_key": idempotency_key, "state": state, "position": _position(position),
                            "replay": result is not None and result.get("duplicate_of") is not None}
    if result is not None:
        for name in ("event_name", "outcome", "duplicate_of", "stream_time", "domain_version", "digest",
                     "instances"):
            if name in result:
                body[name] = result[name]
    if divergence is not None:
        body["divergence"] = {k: divergence[k] for k in DIVERGENCE_FIELDS if k in divergence}
    return body


def _location(idempotency_key: str) -> str:
    return "/v1/events/" + quote(idempotency_key, safe="")


def _reused_message(result: dict) -> str:
    detail = result["outcome"].get("detail") or ""
    return (f"idempotency key {result['idempotency_key']!r} was already used for a different request"
            + (f" ({detail})" if detail else "") + "; use a new key for a new request")


def submission_response(sub: Submission, timeout_ms: int) -> web.Response:
    """The HTTP answer to a submission: 200 applied, 409 rejected by the domain, 422 key
    reused (the Warden's verdict), 202 undecided, 502 diverged."""
    if sub.status == "pending":
        body = event_body(sub.idempotency_key, "pending", sub.position)
        waited = (f"not decided within {timeout_ms} ms" if timeout_ms > 0
                  else "not waited for, as the request's Prefer header asked")
        body["message"] = f"{waited}; the event was accepted: poll {_location(sub.idempotency_key)}"
        return json_response(202, body, {"Location": _location(sub.idempotency_key), "Retry-After": "1"})
    if sub.status == "diverged":
        body = event_body(sub.idempotency_key, "diverged", sub.position, divergence=sub.divergence)
        body["replay"] = sub.replay
        return error_response(502, "diverged",
                              "the instances disagreed on this event: a fault was detected, and no outcome "
                              "was published (see divergence)", None,
                              {"Idempotent-Replayed": "true" if sub.replay else "false"}, **body)
    result = sub.result
    body = event_body(sub.idempotency_key, "decided", sub.position, result)
    body["replay"] = sub.replay  # also a repeat answered with its agreed original's result
    headers = {"Idempotent-Replayed": "true" if sub.replay else "false"}
    outcome = result["outcome"]
    if outcome["status"] == "applied":
        return json_response(200, body, headers)
    reason = outcome["reason"] or "rejected"
    if reason == "idempotency_key_reused":
        return error_response(422, reason, _reused_message(result),
                              [{"field": "Idempotency-Key", "reason": reason, "message": _reused_message(result)}],
                              headers, **body)
    detail = outcome.get("detail") or ""
    return error_response(409, reason, f"rejected by {result.get('domain_version', 'the domain')}: {reason}"
                          + (f" ({detail})" if detail else ""), None, headers, **body)


def status_response(st: KeyStatus, ttl_ms: int) -> web.Response:
    if st.state == "unknown":
        return error_response(404, "not_found",
                              f"no event with idempotency key {st.idempotency_key!r} was submitted within the "
                              f"last {ttl_ms} ms (DOCKET_IDEMPOTENCY_TTL_MS)",
                              idempotency_key=st.idempotency_key, state="unknown")
    return json_response(200, event_body(st.idempotency_key, st.state, st.position, st.result, st.divergence))


# --------------------------------------------------------------------------- request parsing


def parse_idempotency_key(raw: str | None, quoted: bool = True) -> tuple[str | None, dict | None]:
    """(key, None) or (None, field error). An RFC 8941 sf-string (quoted) is unquoted
    when ``quoted`` (the Idempotency-Key header); a URL path segment has no such syntax,
    so there a quote is a character of the key (and the key rule refuses it)."""
    if raw is None:
        return None, {"field": "Idempotency-Key", "reason": "missing",
                      "message": "the Idempotency-Key header is required (e.g. a UUID per request)"}
    key = raw.strip() if quoted else raw
    if quoted and len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key:
        return None, {"field": "Idempotency-Key", "reason": "invalid_idempotency_key",
                      "message": "the Idempotency-Key header is empty"}
    # a key in GET's path is no header: its error named the Idempotency-Key (the
    # fifteenth fresh-user trial)
    what = "the Idempotency-Key" if quoted else "the idempotency key in the path"
    if len(key) > openapi.MAX_IDEMPOTENCY_KEY:
        return None, {"field": "Idempotency-Key", "reason": "too_long",
                      "message": f"{what} is {len(key)} characters; at most {openapi.MAX_IDEMPOTENCY_KEY}"}
    if not _KEY.fullmatch(key):
        return None, {"field": "Idempotency-Key", "reason": "invalid_idempotency_key",
                      "message": f"{what} must be {_KEY_RULE}"}
    return key, None


_SHOWN_CHARS = 40  # of a hostile header value echoed in an error message


def _shown(value: str) -> str:
    """``value`` quoted for an error message, cut to _SHOWN_CHARS characters."""
    return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")


def _sf_members(raw: str) -> list[tuple[str, str]]:
    """Split a header value into its RFC 8941 list members, each as (bare item,
    parameters): a comma outside a quoted string separates members, a semicolon outside
    one starts the member's parameters. A quoted sf-string is kept whole, quotes and
    backslash escapes included, so ``"a,b"`` is one member (an ill-formed key, not a list)."""
    members: list[tuple[str, str]] = []
    item: list[str] = []
    params: list[str] = []
    part = item
    quoted = escaped = False
    for ch in raw:
        if quoted:
            part.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            part.append(ch)
        elif ch == ",":
            members.append(("".join(item).strip(), "".join(params).strip()))
            item, params = [], []
            part = item
        elif ch == ";" and part is item:
            part = params
            part.append(ch)
        else:
            part.append(ch)
    members.append(("".join(item).strip(), "".join(params).strip()))
    return members


def parse_idempotency_key_header(values: list[str]) -> tuple[str | None, dict | None]:
    """(key, None) or (None, field error) for the ``Idempotency-Key`` header of POST
    /v1/events, given every field of that name (``request.headers.getall``).

    The header is ONE RFC 8941 Item: a key (an sf-string, or the unquoted form) and
    nothing else. Refused, so that the API never picks one key of several the client
    sent and never drops what it did not understand: two or more header fields
    (``repeated_header``), a list value such as ``a, b`` or ``"a", "b"``, which a proxy
    makes of two fields (``list_not_allowed``), and parameters such as ``a;x=1``
    (``parameters_not_allowed``). Otherwise :func:`parse_idempotency_key` judges the key."""
    if len(values) > 1:
        return None, {"field": "Idempotency-Key", "reason": "repeated_header",
                      "message": f"the Idempotency-Key header is sent {len(values)} times "
                                 f"({', '.join(_shown(v) for v in values[:3])}{', ...' if len(values) > 3 else ''}); "
                                 "send it once, with one key"}
    if not values:
        return parse_idempotency_key(None)
    raw = values[0]
    members = _sf_members(raw)
    if len(members) > 1:
        return None, {"field": "Idempotency-Key", "reason": "list_not_allowed",
                      "message": f"the Idempotency-Key must hold one key, not a list of {len(members)} "
                                 f"({_shown(raw.strip())}): a comma outside quotes separates list members"}
    item, params = members[0]
    if params:
        return None, {"field": "Idempotency-Key", "reason": "parameters_not_allowed",
                      "message": f"the Idempotency-Key must be a key without parameters (got {_shown(params)} "
                                 f"after {_shown(item)})"}
    return parse_idempotency_key(raw)


def parse_prefer(raw: str | None, timeout_s: float) -> tuple[float, str | None]:
    """RFC 7240 ``Prefer``: ``respond-async`` or ``wait=N`` (seconds) shorten the wait for
    the result; they never lengthen it past the server's timeout. Both together, in
    either order, mean "wait up to N s, then answer 202" (RFC 7240, section 4.3), so
    the wait is N's; ``respond-async`` alone is no wait.

    ``raw`` is every Prefer field of the request joined with ", " (None or "" for none):
    several fields are one list of preferences (RFC 7240, section 2; RFC 9110, section
    5.3), so ``Prefer: respond-async`` and ``Prefer: wait=3`` sent as two fields, in
    either order, are ``respond-async, wait=3``. A preference is ``token [ BWS "=" BWS
    word ]`` (RFC 7240, section 2): ``wait = 3`` is ``wait=3``. The first valid ``wait``
    counts, within a field or across fields (``wait=3, wait=9`` waits 3 s; an invalid one,
    ``wait=x`` or ``wait=-1``, is skipped); parameters after ``;`` and anything else are
    ignored. Returns (seconds to wait, the Preference-Applied value or None), e.g.
    ``(3.0, "respond-async, wait=3")``."""
    if not raw:
        return timeout_s, None
    is_async, wait = False, None
    for pref in raw.split(","):
        name, eq, value = pref.split(";")[0].partition("=")
        token = name.strip().lower()
        if token == "respond-async" and not eq:  # it takes no value (RFC 7240, section 4.1)
            is_async = True
        elif token == "wait" and eq and wait is None:
            try:
                wait = int(value.strip().strip('"'))
            except ValueError:
                continue
            wait = wait if wait >= 0 else None
    if wait is None:
        return (0.0, "respond-async") if is_async else (timeout_s, None)
    # Preference-Applied names the wait honoured: a longer one is cut to the timeout
    applied = f"wait={wait}" if wait <= timeout_s else f"wait={timeout_s:g}"
    return min(float(wait), timeout_s), f"respond-async, {applied}" if is_async else applied


# The content codings the API decodes a request body from (app/content_coding.py, not
# aiohttp's decoding, which accepts a stream cut short), and identity. Any other, or a
# body coded twice ("gzip, br"), is 415 with Accept-Encoding, as RFC 9110 (section
# 15.5.16) says.
CONTENT_CODINGS = content_coding.CODINGS | {"identity"}
_CODED = ", ".join(sorted(CONTENT_CODINGS - {"identity"}))  # the 415's list and Accept-Encoding


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/")
                                                   and content_type.endswith("+json"))


# --------------------------------------------------------------------------- handlers


def _shown_fields(values: list[str]) -> str:
    """A header's field values as a message quotes them: joined, at most 64 characters."""
    shown = ", ".join(values)
    return shown if len(shown) <= 64 else shown[:61] + "..."


def _check_transfer_coding(request: web.Request) -> None:
    """ApiError 501 unless the request's Transfer-Encoding is absent or ``chunked`` alone:
    aiohttp takes any list ending in chunked for chunked and leaves the other codings
    (gzip, say) undone, so such a body would be read as if it were not coded. RFC 9112,
    section 6.1: a server SHOULD answer a transfer coding it does not know with 501.
    The connection is closed after the answer, since its framing is in doubt."""
    fields = request.headers.getall("Transfer-Encoding", [])
    codings = [c.strip().lower() for field in fields for c in field.split(",") if c.strip()]
    if fields and codings != ["chunked"]:
        shown = _shown_fields(fields)
        raise ApiError(501, "not_implemented",
                       f"Transfer-Encoding {shown!r} is not supported: only chunked is (send a compressed body "
                       f"with Content-Encoding: {_CODED})", close=True)


def _check_event_head(request: web.Request) -> list[str]:
    """What POST /v1/events refuses from a request's head alone, before its body is read:
    ApiError 415 for a media type that is not JSON or a Content-Encoding docket does
    not decode, 413 for a declared length over MAX_BODY_BYTES. Returns the request's
    Content-Encoding fields."""
    given = request.headers.get("Content-Type")
    if not _is_json(request.content_type) or given is None:
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be JSON sent as Content-Type: application/json (got {given or 'none'})")
    codings = request.headers.getall("Content-Encoding", [])
    if codings and (len(codings) > 1 or codings[0].strip().lower() not in CONTENT_CODINGS | {""}):
        shown = _shown_fields(codings)
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Encoding {shown!r} is not supported: send the body as it is, or coded with "
                       f"one of {_CODED}", headers={"Accept-Encoding": _CODED})
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large",
                       f"the body is {request.content_length} bytes; at most {MAX_BODY_BYTES}")
    return codings


async def post_event(request: web.Request) -> web.Response:
    client: DocketClient = request.app[CLIENT]
    config = request.app[CONFIG]
    codings = _check_event_head(request)
    try:
        async with asyncio.timeout(config["read_timeout_s"]):  # a client that stalls holds nothing for long
            raw = await request.read()  # client_max_size stops a chunked body over the limit
        raw = content_coding.decode_body(codings[0].strip().lower() if codings else "", raw, MAX_BODY_BYTES)
    except web.RequestPayloadError as exc:  # chunked framing aiohttp cannot read
        message = f"the body could not be read: {_fault_text(exc)}"
        raise ApiError(400, "invalid_request", message,
                       [{"field": "body", "reason": "unreadable_body", "message": message}]) from None
    except content_coding.UnreadableBody as exc:  # not what its Content-Encoding says, or cut short
        message = f"the body could not be read: {exc}"
        raise ApiError(400, "invalid_request", message,
                       [{"field": "body", "reason": "unreadable_body", "message": message}]) from None
    except content_coding.BodyTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from None
    except ConnectionError:  # the client closed the connection before the whole body arrived
        raise ApiError(400, "invalid_request", "the connection was closed before the whole body arrived") from None
    except TimeoutError:
        raise ApiError(408, "request_timeout",
                       f"the body did not arrive whole within {config['read_timeout_s'] * 1000:.0f} ms "
                       "(DOCKET_API_READ_TIMEOUT_MS): send it at once; nothing was accepted", close=True) from None
    try:
        body = loads_strict(raw)
    except orjson.JSONDecodeError as exc:
        problem = utf8_problem(raw)  # orjson's words for it: "str is not valid UTF-8: surrogates ..."
        if problem is not None:
            message = f"the body is not UTF-8 text ({problem}): JSON must be UTF-8 (RFC 8259)"
            raise ApiError(400, "invalid_json", message,
                           [{"field": "body", "reason": "not_utf8", "message": message}]) from None
        message = f"the body is not valid JSON: {exc}"
        raise ApiError(400, "invalid_json", message,
                       [{"field": "body", "reason": "not_json", "message": message}]) from None
    except NotIJson as exc:  # a member named twice is that member's fault; depth and range the body's
        raise ApiError(400, "invalid_json", f"the body is not valid I-JSON: {exc}",
                       [{"field": exc.name or "body", "reason": exc.reason, "message": str(exc)}]) from None
    errors: list[dict] = []
    key, key_error = parse_idempotency_key_header(request.headers.getall("Idempotency-Key", []))
    if key_error:
        errors.append(key_error)
    if not isinstance(body, dict):
        errors.append({"field": "body", "reason": "invalid_request",
                       "message": f"the body must be a JSON object {{\"event_name\": ..., \"payload\": {{...}}}}, "
                                  f"not {type(body).__name__ if body is not None else 'null'}"})
    else:
        for name in sorted(set(body) - set(_REQUEST_FIELDS)):
            errors.append({"field": name, "reason": "unknown_field",
                           "message": f"unknown field {shown_name(name)!r}; a request has only event_name and payload"})
        if "event_name" not in body:
            errors.append({"field": "event_name", "reason": "missing", "message": "event_name is required"})
        if "payload" not in body:
            errors.append({"field": "payload", "reason": "missing", "message": "payload is required"})
        if "event_name" in body and "payload" in body:
            errors += _field_errors(client.check_event(body["event_name"], body["payload"]))
        elif "event_name" in body:
            errors += [e for e in _field_errors(client.check_event(body["event_name"], {}))
                       if e["field"] == "event_name"]
    if errors:
        errors = _at_most(errors, MAX_FIELD_ERRORS)
        raise ApiError(400, "invalid_request", "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)
    # several Prefer fields are one list (RFC 7240, section 2): the first alone lost the rest
    wait_s, applied = parse_prefer(", ".join(request.headers.getall("Prefer", [])), config["timeout_s"])
    try:
        sub = await client.submit(body["event_name"], body["payload"], key, timeout=wait_s,
                                  client=request.get(CLIENT_NAME))
    except ValidationError as exc:
        status = 413 if exc.reason == "too_large" else 400
        raise ApiError(status, "payload_too_large" if status == 413 else "invalid_request", str(exc),
                       _field_errors(exc.errors)) from None
    except KeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc),
                       [{"field": "Idempotency-Key", "reason": "idempotency_key_reused", "message": str(exc)}],
                       idempotency_key=key, position=_position(exc.position)) from None
    except (KafkaUnavailable, ClientNotStarted) as exc:
        if isinstance(exc, ClientNotStarted):  # the API's client has not connected (yet, or again)
            exc = KafkaUnavailable(f"not connected to Kafka at {client.settings.kafka_bootstrap}: nothing was sent. "
                                   "Send it again once Kafka is back: it cannot be applied twice", accepted=False)
        if exc.accepted is False:
            message = f"the request was not accepted: {exc}"
        else:
            message = f"the outcome of the request is unknown: {exc}"
        request.app[METRICS].observe_unavailable(exc.accepted is False, message)
        raise ApiError(503, "kafka_unavailable", message, headers={"Retry-After": "5"}) from None
    request.app[METRICS].observe_submission(sub)
    response = submission_response(sub, int(wait_s * 1000))
    if applied:
        response.headers["Preference-Applied"] = applied
    return response


def _require_started(client: DocketClient, what: str) -> None:
    if not client.started:
        reason = f" ({client.last_error})" if client.last_error else ""
        raise ApiError(503, "not_ready", f"not connected to Kafka yet: {what} unknown{reason}",
                       headers={"Retry-After": "5"})


async def get_event(request: web.Request) -> web.Response:
    client: DocketClient = request.app[CLIENT]
    key, problem = parse_idempotency_key(request.match_info["idempotency_key"], quoted=False)
    if problem:
        raise ApiError(400, "invalid_request", problem["message"], [{**problem, "field": "idempotency_key"}])
    _require_started(client, "the state of events is")
    return status_response(client.status(key, request.get(CLIENT_NAME)), client.ttl_ms)


async def get_entity(request: web.Request) -> web.Response:
    client: DocketClient = request.app[CLIENT]
    kind, ident = request.match_info["type"], request.match_info["id"]
    errors = []
    if not _ENTITY_TYPE.fullmatch(kind):
        errors.append({"field": "type", "reason": "invalid_entity_type",
                       "message": "the entity type must be 1-64 characters of A-Z a-z 0-9 . _ -"})
    if not _ENTITY_ID.fullmatch(ident):
        errors.append({"field": "id", "reason": "invalid_entity_id",
                       "message": "the entity id must be 1-200 characters of A-Z a-z 0-9 . _ : -"})
    if errors:
        raise ApiError(400, "invalid_request", "; ".join(e["message"] for e in errors), errors)
    _require_started(client, "entity states are")
    key = f"{kind}:{ident}"
    ent = client.entity(key)
    if ent is None:
        raise ApiError(404, "not_found", f"no agreed change of entity {key!r}: no event has changed it "
                                         "(or it does not exist in this domain)", key=key)
    return json_response(200, ent)


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    client: DocketClient = request.app[CLIENT]
    checks = {"kafka_connected": client.connected, "results_caught_up": client.caught_up}
    ready = all(checks.values())
    body: dict[str, Any] = {"ready": ready, "checks": checks, "domain": client.domain.name}
    blocked = client.blocked_partitions
    if blocked:
        # shown, not a reason to take the API out of service: submissions are still
        # accepted, and decided once enough instances judge the partition again
        body["blocked_partitions"] = blocked
        body["blocked_message"] = (
            "instance(s) stopped at a domain version they may not judge with: "
            + "; ".join(f"{b['instance']} on partition {b['partition']} at offset {b['offset']} ({b['version']})"
                        for b in blocked)
            + ". What to do: "
            + " ".join(sorted({f"{b['instance']}: " + (b.get("remedy") or f"upgrade this worker to code that registers "
                                                                          f"{b['version']} and restart it") + "."
                               for b in blocked})))
    if not ready:
        if not client.started:
            body["message"] = (f"connecting to Kafka at {client.settings.kafka_bootstrap}"
                               + (f": {client.last_error}" if client.last_error else ""))
        elif not checks["kafka_connected"]:
            body["message"] = f"lost the connection to Kafka at {client.settings.kafka_bootstrap}"
        else:
            body["message"] = f"reading {client.settings.results_topic} up to its end"
    return json_response(200 if ready else 503, body)


async def metrics_page(request: web.Request) -> web.Response:
    metrics: ApiMetrics = request.app[METRICS]
    metrics.refresh(request.app[CLIENT])
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_page(request: web.Request) -> web.Response:
    return json_response(200, request.app[CONFIG]["openapi"])


# --------------------------------------------------------------------------- metrics


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("docket_api_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("docket_api_request_duration_seconds", "HTTP request latency", ["route"],
                                 registry=r, buckets=LATENCY_BUCKETS)
        self.wait = Histogram("docket_api_result_wait_seconds",
                              "Kafka acknowledged the event -> agreed result read (or gave up)", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.submissions = Counter("docket_api_submissions", "submissions by what came of them", ["result"],
                                   registry=r)
        self.in_flight = Gauge("docket_api_waiting_submissions", "submissions waiting for a result", registry=r)
        self.index = Gauge("docket_api_idempotency_keys", "idempotency keys remembered (within the TTL)",
                           registry=r)
        self.entities = Gauge("docket_api_entities", "entities in the agreed-state view", registry=r)
        self.ready = Gauge("docket_api_ready", "1 when connected to Kafka and caught up", registry=r)
        # (monotonic s of the first, how many) of the 503 kafka_unavailable answers since
        # the last acknowledged submission; None when the last one was acknowledged
        self._unavailable: tuple[float, int] | None = None

    def observe_submission(self, sub: Submission) -> None:
        """Count an answered submission. Ends a run of 503s (observe_unavailable) only
        when Kafka acknowledged this one after the run's first 503: a request
        acknowledged before an outage and answered during it (its result came late),
        or a repeat answered from the index (nothing produced), says nothing of Kafka
        now; either ended the run with a false "acknowledges submissions again" line
        (a fresh-clone user check)."""
        acked_at = time.monotonic() - sub.waited_s
        if self._unavailable and not sub.repeated and acked_at >= self._unavailable[0]:
            began, count = self._unavailable
            self._unavailable = None
            log.warning("Kafka acknowledges submissions again, after %d answered 503 kafka_unavailable over %.1f s",
                        count, time.monotonic() - began)
        self.wait.observe(sub.waited_s)
        if sub.status == "decided":
            kind = "replay" if sub.replay else sub.result["outcome"]["status"]
        else:
            kind = sub.status
        self.submissions.labels(kind).inc()

    def observe_unavailable(self, not_accepted: bool, message: str) -> None:
        """A submission answered 503 kafka_unavailable: counted as ``not_accepted`` (Kafka
        out of reach, nothing sent) or ``outcome_unknown`` (sent, not acknowledged in
        time). The first of a run of them logs one WARNING with its message; the next
        acknowledged submission logs how many there were and over how long (seconds), so
        an outage is two lines however many requests it refuses."""
        self.submissions.labels("not_accepted" if not_accepted else "outcome_unknown").inc()
        if self._unavailable is None:
            self._unavailable = (time.monotonic(), 1)
            log.warning("answering submissions 503 kafka_unavailable, first: %s. Check that the broker at "
                        "DOCKET_KAFKA_BOOTSTRAP runs and answers; one line follows when Kafka acknowledges "
                        "a submission again", message)
        else:
            self._unavailable = (self._unavailable[0], self._unavailable[1] + 1)

    def refresh(self, client: DocketClient) -> None:
        self.in_flight.set(client.in_flight)
        self.index.set(client.index_size)
        self.entities.set(client.entity_count)
        self.ready.set(1 if client.ready else 0)


# --------------------------------------------------------------------------- the app


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _unauthorized(message: str, errors: list[dict] | None = None) -> ApiError:
    return ApiError(401, "unauthorized", message, errors, headers={"WWW-Authenticate": 'Bearer realm="docket"'})


# IANA's HTTP Authentication Scheme Registry: the schemes a 401 may name (lower case ->
# as registered). Any other word before a space is not shown: it may be a secret.
_AUTH_SCHEMES = {name.lower(): name for name in (
    "Basic", "Bearer", "Concealed", "Digest", "DPoP", "GNAP", "HOBA", "Mutual", "Negotiate", "OAuth",
    "PrivateToken", "SCRAM-SHA-1", "SCRAM-SHA-256", "vapid")}


def _check_auth(request: web.Request, clients: tuple[tuple[str, bytes], ...]) -> str:
    """The name of the client whose bearer token the request carries; ApiError 401/403
    otherwise: 401 without the header, with more than one Authorization field, or with a
    credential that is not ``Bearer <token>`` (a single word, no scheme; ``Bearer``
    without a token; another scheme); 403 for a token not in DOCKET_API_TOKENS. No answer
    shows the header's value (only a registered scheme's name)."""
    fields = request.headers.getall("Authorization", [])
    if not fields:
        raise _unauthorized("missing credentials: send Authorization: Bearer <token>")
    if len(fields) > 1:
        # Never one of them (the first, the last, any valid one): a request that carries
        # two credentials has no one client. The values are secrets: not echoed.
        message = (f"the Authorization header is sent {len(fields)} times; send it once, "
                   "with one bearer token")
        raise _unauthorized(message, [{"field": "Authorization", "reason": "repeated_header",
                                       "message": message}])
    # No message below shows any part of the header but a registered scheme's name: a
    # value without a scheme may be the token itself.
    scheme, space, token = fields[0].strip().partition(" ")
    token = token.strip()
    if not scheme:
        message = "the Authorization header is empty; send Authorization: Bearer <token>"
        raise _unauthorized(message, [{"field": "Authorization", "reason": "missing_credentials",
                                       "message": message}])
    if scheme.lower() == "bearer":
        if not token:
            message = "the bearer token is missing: send Authorization: Bearer <token>"
            raise _unauthorized(message, [{"field": "Authorization", "reason": "missing_token", "message": message}])
    elif not space:
        message = ("the Authorization header must be 'Bearer <token>': it holds a single word, no scheme "
                   "(the value is not shown)")
        raise _unauthorized(message, [{"field": "Authorization", "reason": "missing_scheme", "message": message}])
    else:
        known = _AUTH_SCHEMES.get(scheme.lower())
        message = ("the Authorization header must be 'Bearer <token>', not "
                   + (f"a {known} credential" if known else "a credential of another scheme (not shown)"))
        raise _unauthorized(message, [{"field": "Authorization", "reason": "not_bearer", "message": message}])
    given = token.encode("utf-8", "surrogateescape")
    found = None
    for name, secret in clients:  # every token compared: no timing hint
        if hmac.compare_digest(given, secret):
            found = name
    if found is None:
        raise ApiError(403, "forbidden", "the bearer token is not valid for this API (not in DOCKET_API_TOKENS)")
    return found


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    if exc.status == 404:
        message = "no such endpoint; see /openapi.json"
    elif exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        message = f"method not allowed here; allowed: {allowed}"
    elif exc.status == 413:
        message = f"the body is over the limit of {MAX_BODY_BYTES} bytes"
    else:
        message = exc.text or exc.reason
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
    return error_response(exc.status, codes.get(exc.status, "http_error"), message, None, headers)


def create_app(settings: Settings | None = None, client: DocketClient | None = None, *,
               tokens: tuple[str, ...] | None = None, auth: bool = True, timeout_ms: int | None = None,
               connect: bool = True) -> web.Application:
    """The aiohttp application. ``tokens`` (DOCKET_API_TOKENS entries, ``name:token`` or
    bare) default to DOCKET_API_TOKENS; a request's token names its client, the scope of
    its idempotency keys. ``auth=False`` (``--insecure-no-auth``) accepts requests
    without credentials, all in the unscoped key space. ``connect=False`` leaves the
    client as it is (started by the caller, or not at all)."""
    settings = settings or load()
    client = client or DocketClient(settings)
    named = settings.api_clients if tokens is None else named_tokens(tokens, "tokens")
    if auth and not named:
        raise ValueError("no bearer token configured: set DOCKET_API_TOKENS")
    secrets = tuple((name, t.encode("utf-8")) for name, t in named)
    timeout_ms = settings.api_timeout_ms if timeout_ms is None else timeout_ms
    metrics = ApiMetrics()

    @web.middleware
    async def observe(request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = _route_of(request)
        try:
            _check_transfer_coding(request)
            if auth and request.path.startswith("/v1/"):
                request[CLIENT_NAME] = _check_auth(request, secrets)
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:  # the router's 404 / 405, the body limit's 413
            response = _from_http_exception(exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(500, "internal_error", "the API failed on this request; see its log")
        metrics.requests.labels(request.method, route, str(response.status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    app = web.Application(middlewares=[observe], client_max_size=MAX_BODY_BYTES)
    app[CLIENT] = client
    app[METRICS] = metrics
    app[REFUSED] = StartRefused()
    app[CONFIG] = {"timeout_s": timeout_ms / 1000, "read_timeout_s": settings.api_read_timeout_ms / 1000,
                   "openapi": openapi.document(client.domain, timeout_ms=timeout_ms,
                                               ttl_ms=settings.idempotency_ttl_ms, auth=auth)}
    def refuse(request: web.Request, response: web.Response) -> web.Response:
        # answered in place of 100 Continue: the client sends no body, so none is awaited
        response.force_close()
        if isinstance(request.protocol, RequestHandler):  # `docket api`'s (not a test server's)
            request.protocol.answer_then_close()
        metrics.requests.labels(request.method, request.path, str(response.status)).inc()
        return response

    async def expect_continue(request: web.Request) -> web.StreamResponse | None:
        # Expect: 100-continue (RFC 9110, 10.1.1): what the head alone refuses is
        # answered before the client sends its body, not after (aiohttp's own handler
        # sends 100 Continue at once). The refusal closes the connection: a client may
        # send the body anyway, and its bytes must not be read as the next request.
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no interim answers
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            shown = _shown_fields([expect])
            return refuse(request, error_response(417, "expectation_failed",
                                                  f"Expect: {shown!r} is not supported; only 100-continue is"))
        try:
            _check_transfer_coding(request)
            if auth:
                _check_auth(request, secrets)
            _check_event_head(request)
        except ApiError as exc:
            return refuse(request, exc.response())
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper is still to come (as aiohttp's handler does)
        return None

    app.router.add_post("/v1/events", post_event, expect_handler=expect_continue)
    app.router.add_get("/v1/events/{idempotency_key}", get_event)
    app.router.add_get("/v1/entities/{type}/{id}", get_entity)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/openapi.json", openapi_page)
    if connect:
        app.cleanup_ctx.append(_kafka_connection)
    return app


def _retry_start(exc: BaseException) -> bool:
    """Whether the client's start is tried again after ``exc``: not after a
    ConfigError (KafkaAuthError: Kafka answered and refused the credentials or the TLS
    handshake; or a setting it cannot use), which no retry can fix; after anything
    else (Kafka unreachable, topics missing, a fault of docket's)."""
    return not isinstance(exc, ConfigError)


def _kafka_trouble(exc: BaseException) -> bool:
    """True for what an unreachable or unready Kafka, or missing topics, raise while the
    client starts; anything else is a fault of docket's and is logged as one."""
    from aiokafka.errors import KafkaError

    return isinstance(exc, (KafkaUnavailable, TopicsMissing, KafkaError, OSError, TimeoutError))


async def _kafka_connection(app: web.Application):
    """Connect the client in the background, retrying until Kafka answers; stop it at
    shutdown. A start that retrying cannot fix (:func:`_retry_start`) ends the
    attempts and sets ``app[REFUSED]``, which stops :func:`serve`."""
    client: DocketClient = app[CLIENT]

    async def connect() -> None:
        said, began, warned = None, time.monotonic(), False
        while not client.started:
            try:
                await client.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  unreachable, topics missing: report, retry
                client.last_error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
                if not _retry_start(exc):
                    log.error("not connecting to Kafka, stopping (a retry cannot fix this): %s", exc)
                    app[REFUSED].set(exc)
                    return
                # Kafka's trouble is INFO within the grace, and said again as a WARNING once
                # it has outlasted the grace
                waited = time.monotonic() - began
                late = waited >= CONNECT_GRACE_S
                kafkas = _kafka_trouble(exc)
                if client.last_error != said or (kafkas and late and not warned):
                    if kafkas:
                        log.log(logging.WARNING if late else logging.INFO,
                                "not connected to Kafka%s (retrying every %.0f s): %s",
                                f" for {waited:.0f} s" if late else "", CONNECT_RETRY_S, client.last_error)
                    else:  # not Kafka's doing: a fault of docket's, shown as one
                        log.error("the Kafka client failed to start (retrying every %.0f s): %s: %s",
                                  CONNECT_RETRY_S, type(exc).__name__, exc, exc_info=exc)
                    said, warned = client.last_error, warned or late
                await asyncio.sleep(CONNECT_RETRY_S)  # retry back-off, not a synchronisation
        client.last_error = None
        log.info("connected to Kafka at %s", client.settings.kafka_bootstrap)

    task = asyncio.create_task(connect(), name="docket api: connect to Kafka")
    yield
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    await client.stop()


# --------------------------------------------------------------------------- the command


def _client_fault(exc: BaseException) -> bool:
    """True for what aiohttp raises on a request it cannot parse or whose body it cannot
    decode (always answered 400 by aiohttp, or by post_event for the body)."""
    return isinstance(exc, (HttpProcessingError, web.RequestPayloadError))


_FAULT_CHARS = 200  # of aiohttp's description of a malformed request, in one log line
# What aiohttp quotes of the request in its descriptions: a bytes or str literal
# (b'Authorization: Bearer ...', 'GET /x?token=...'), and everything after it. A literal
# starts a line or follows a space, a colon, a bracket or "=" (bytearray(b'...')): the
# apostrophe of "can't" starts none, nor does a quoted field name aiohttp names
# ("Missing 'Host' header in request.").
_QUOTED = re.compile(r"""\s*:?\s*(?:bytearray\()?(?<![^\s:(\[=])(?!'[!#$%&*+.^_`|~0-9A-Za-z-]{1,64}' header)"""
                     r"""b?['"].*$""")
# A quoted header line: its field name, nothing of its value.
_HEADER_LINE = re.compile(r"""^b?['"]([!#$%&*+.^_`|~0-9A-Za-z-]{1,64}):""")
_DUPLICATE_FIELD = re.compile(r"Duplicate '[!#$%&*+.^_`|~0-9A-Za-z-]{1,64}' header found\.")


def _fault_text(exc: BaseException) -> str:
    """aiohttp's description of a malformed request (or of a client gone) on one line,
    WITHOUT anything the request held: aiohttp quotes the offending bytes (a whole header
    line, value included: a bearer token, say), or the request target, in its message;
    only its own description is kept, with the name of the header field at fault when a
    quoted header line shows it. Cut to _FAULT_CHARS, control characters escaped."""
    from aiohttp.http_exceptions import InvalidURLError

    if isinstance(exc, web.RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__
    if isinstance(exc, InvalidURLError):  # its message is the request target itself
        return "Invalid request target (not shown)"
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip("^ ")]
    said, field = [], None
    for line in lines:
        match = _HEADER_LINE.match(line)
        if match:
            field = field or match.group(1)
        elif not line.startswith(("b'", 'b"', "'", '"')):
            said.append(line if _DUPLICATE_FIELD.fullmatch(line) else _QUOTED.sub("", line).rstrip(" :."))
    text = ": ".join(part for part in said if part)
    if field:
        text += f" (header field {field!r}; its value is not shown)"
    if len(text) > _FAULT_CHARS:
        text = text[:_FAULT_CHARS] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) or type(exc).__name__


class ServerLog(logging.LoggerAdapter):
    """What aiohttp's request handler logs through (``AppRunner(logger=...)``), over its
    own ``aiohttp.server`` logger. A request aiohttp cannot parse (two Content-Type
    fields, a NUL or an obs-fold in a header, a line over 8190 bytes, a chunked or
    encoded body it cannot decode) is the client's fault, answered 400: it is logged as
    one WARNING line (or aiohttp's DEBUG, for what it deems noise) without a traceback,
    where aiohttp logs ERROR and the traceback. Such lines are thinned per peer and
    fault (:class:`app.logs.RepeatFilter`: the first in each ``window_s``, 10 s, passes,
    the next to pass counts the rest): anyone who can open a connection, credentials or
    not, could otherwise write one WARNING line per request. Everything else passes
    unchanged."""

    def __init__(self, logger: logging.Logger, window_s: float = 10.0) -> None:
        super().__init__(logger, {})
        self.repeats = logs.RepeatFilter(prefixes=(logger.name,), window_s=window_s)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException) and _client_fault(exc):
            level = min(level, logging.WARNING)
            if self.isEnabledFor(level):
                where = f" from {args[0]}" if len(args) == 1 and "%s" in str(msg) else ""
                # the whole line is the message (no args), so that the thinning is per peer and fault
                record = self.logger.makeRecord(self.logger.name, level, __file__, 0,
                                                f"refused a malformed HTTP request{where} (the client's fault): "
                                                f"{_fault_text(exc)}", (), None)
                if self.repeats.filter(record):
                    self.logger.handle(record)
            return
        super().log(level, msg, *args, **kwargs)


SERVER_LOG = ServerLog(logging.getLogger("aiohttp.server"))

CLIENT_CLOSED_REQUEST = 499  # nginx's status for it: never sent (nobody is there), logged and counted


class RequestHandler(web_protocol.RequestHandler):
    """aiohttp's per-connection request handler, with its answers to what happens before
    docket's middleware sees a request:

    - a request its parser refuses is answered 400 with a description that holds
      nothing of the request (aiohttp's own quotes the offending header line, a bearer
      token included): :func:`_fault_text`, the same text SERVER_LOG logs;
    - a client that closed (or half-closed) its connection before its request was
      answered, e.g. right after headers with ``Expect: 100-continue`` (aiohttp's
      interim ``100 Continue`` then finds the connection closing), is logged as ONE
      INFO line without a traceback, where aiohttp logs ERROR 'Error handling request'
      and the traceback and counts a 500: it is the client's doing, not a fault."""

    __slots__ = ()

    def answer_then_close(self) -> None:
        """Close the connection once the answer in progress is written, reading nothing
        more of it: not what is left of the request's body either (aiohttp's lingering
        read, up to lingering_time, which waits for a body that a client told
        ``Expect: 100-continue`` is refused never sends). The answer itself must say
        Connection: close (``response.force_close()``)."""
        self._lingering_time = 0.0

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            self.logger.info("the client at %s closed the connection before its request was answered "
                             "(not an error): %s", request.remote, _fault_text(exc))
            response = web.Response(status=CLIENT_CLOSED_REQUEST, text="client closed request")
            response.force_close()
            return response
        if exc is not None and _client_fault(exc):
            message = _fault_text(exc)
        return super().handle_error(request, status, exc, message)


class _Server(web.Server):
    """aiohttp's Server, making a docket :class:`RequestHandler` per connection."""

    def __call__(self) -> RequestHandler:
        return RequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's AppRunner, whose server makes docket's :class:`RequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # a plain web.Server, with the app's startup done
        server.__class__ = _Server  # only which request handler it makes changes
        return server


def app_runner(app: web.Application, *, access_log: bool = False) -> web.AppRunner:
    """The AppRunner `docket api` serves ``app`` with: docket's request handler
    (:class:`RequestHandler`), aiohttp's access log when asked, SERVER_LOG for the
    request handler's own reports, request bodies handed over as sent, for
    post_event to decode whole or refuse (app/content_coding.py says why), and
    connections closed when no whole request head came within DOCKET_API_READ_TIMEOUT_MS."""
    # keepalive_timeout: aiohttp closes a connection still waiting for a whole request
    # head that long after it opened or after its last answer (its default is an hour);
    # lingering_time: how long it then reads what is left of an unread body before it
    # closes (10 s by default), so that the answer is not lost to a reset
    read_timeout_s = app[CONFIG]["read_timeout_s"]
    return AppRunner(app, access_log=logging.getLogger("aiohttp.access") if access_log else None,
                     logger=SERVER_LOG, auto_decompress=False,  # post_event decodes (app/content_coding.py)
                     keepalive_timeout=read_timeout_s, lingering_time=min(10.0, read_timeout_s))


async def serve(app: web.Application, host: str, port: int, *, access_log: bool = False,
                announce=print) -> None:
    """Run ``app`` on host:port until SIGINT or SIGTERM, or until its client's start is
    refused for good (``app[REFUSED]``: then, once stopped, raise that ConfigError)."""
    runner = app_runner(app, access_log=access_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()  # stops the Kafka client the setup started
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(port_in_use(host, port, "the REST API", "DOCKET_API_PORT (or --port)")) from None
        problem = host_problem(host, "the REST API", "DOCKET_API_HOST (or --host)")
        if problem:
            raise click.ClickException(problem) from None
        raise
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # noqa: SLF001
    where = f"http://{url_host(host)}:{bound}"
    announce(f"docket api listening on {where} (OpenAPI: {where}/openapi.json)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    refused = app.get(REFUSED)
    waits = [asyncio.ensure_future(stop.wait())]
    if refused is not None:
        waits.append(asyncio.ensure_future(refused.event.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    if refused is not None and refused.error is not None:
        raise refused.error


@click.command("api")
@click.option("--host", default=None, help="listen address [default: $DOCKET_API_HOST]")
@click.option("--port", type=ANY_PORT, default=None,
              help="listen port, 0 for a free one [default: $DOCKET_API_PORT]")
@click.option("--insecure-no-auth", is_flag=True,
              help="FOR LOCAL TESTS ONLY: accept /v1 requests without a bearer token")
def api(host: str | None, port: int | None, insecure_no_auth: bool) -> None:
    """Serve the REST API: submit events, read outcomes and entity states."""
    settings = load()
    if not settings.api_tokens and not insecure_no_auth:
        # a setting at fault, as a malformed token is: a configuration error, exit 2
        raise ConfigError(
            f"DOCKET_API_TOKENS {api_tokens_absence()}: the API accepts only requests with a bearer token from it. "
            "Set it to one or more comma-separated tokens, e.g. "
            "DOCKET_API_TOKENS=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))'), "
            "or pass --insecure-no-auth for a local test.")
    logs.configure(settings.log_level, settings.log_format)
    if insecure_no_auth:
        log.warning("--insecure-no-auth: /v1 endpoints accept requests WITHOUT credentials")
    host, port = host or settings.api_host, settings.api_port if port is None else port
    # before anything connects to Kafka (serve checks again)
    problem = host_problem(host, "the REST API", "DOCKET_API_HOST (or --host)")
    if problem:
        raise click.ClickException(problem)
    if not bindable(host, port):
        raise click.ClickException(port_in_use(host, port, "the REST API", "DOCKET_API_PORT (or --port)"))
    app = create_app(settings, auth=not insecure_no_auth)
    asyncio.run(serve(app, host, port,
                      access_log=settings.log_level in ("debug", "info"),
                      announce=lambda line: click.echo(line, err=False)))
