"""The REST API's OpenAPI 3.1 document, served at ``/openapi.json``.

Written by hand beside the handlers (app/api.py); tests/unit/test_api.py checks that its
paths and methods are exactly the router's, and the schemathesis run in
tests/integration/test_api.py checks the responses against it.
"""

from __future__ import annotations

from typing import Any

from app.records import MAX_IDEMPOTENCY_KEY

# What the HTTP API accepts as an idempotency key: the envelope allows any string of up to
# MAX_IDEMPOTENCY_KEY characters; over HTTP it must also travel unescaped in a header and
# in the path of GET /v1/events/{idempotency_key}.
KEY_CHARS = "A-Za-z0-9._~:@+=-"
KEY_PATTERN = f"^[{KEY_CHARS}]{{1,{MAX_IDEMPOTENCY_KEY}}}$"
ENTITY_TYPE_PATTERN = "^[A-Za-z0-9._-]{1,64}$"
ENTITY_ID_PATTERN = "^[A-Za-z0-9._:-]{1,200}$"

# The document's examples: an idempotency key, and from the domain's kit
# (app/domains/kit.py) an event that applies on a fresh stack and the entity it changes.
EXAMPLE_KEY = "example-0001"


def _kit(domain):
    """The domain's kit, or None (a domain without one gets a document without examples)."""
    import app.domains  # noqa: F401  registers the built-in domains
    from app.registry import registry

    try:
        return registry.kit(domain.name)
    except LookupError:
        return getattr(domain, "kit", None)


def example_event(domain) -> dict | None:
    """The request body of the document's POST /v1/events example, or None."""
    kit = _kit(domain)
    if kit is None:
        return None
    name, payload = kit.example_event
    return {"event_name": name, "payload": payload}


def _example(value) -> dict:
    return {} if value is None else {"example": value}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, headers: dict | None = None) -> dict:
    return _json(_ref("Error"), description, headers)


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "string"}}}
_REPLAYED = {"Idempotent-Replayed": {
    "description": "`true` when this is the original outcome of an earlier request with the same key",
    "schema": {"type": "string", "enum": ["true", "false"]}}}

_AUTH_ERRORS = {
    "401": _error("no credentials, not a Bearer credential (no scheme, another scheme, or `Bearer` without a "
                  "token), or more than one `Authorization` header field: send `Authorization: Bearer <token>` "
                  "once. The answer never shows what the header held",
                  {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}),
    "403": _error("the bearer token is not one of DOCKET_API_TOKENS"),
}


def _event_request(domain) -> dict:
    """One schema per event name when the domain describes its payloads."""
    names = sorted(domain.event_names)
    schema_of = getattr(domain, "payload_schema", None)
    if schema_of is None:
        return {"type": "object", "additionalProperties": False, "required": ["event_name", "payload"],
                "properties": {"event_name": {"type": "string", "enum": names}, "payload": {"type": "object"}}}
    return {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["event_name", "payload"],
         "title": name,
         "properties": {"event_name": {"const": name}, "payload": schema_of(name)}}
        for name in names]}


def _schemas(domain) -> dict:
    position = {"type": "object", "required": ["partition", "offset"],
                "properties": {"partition": {"type": "integer", "minimum": 0},
                               "offset": {"type": "integer", "minimum": 0}}}
    entity = {"type": "object", "required": ["key", "state", "version"],
              "properties": {"key": {"type": "string"}, "state": {"type": "object"},
                             "version": {"type": "integer", "minimum": 1}}}
    outcome = {"type": "object", "required": ["status", "reason", "detail", "entities"],
               "properties": {"status": {"type": "string", "enum": ["applied", "rejected"]},
                              "reason": {"type": ["string", "null"]},
                              "detail": {"type": "string"},
                              "entities": {"type": "array", "items": entity}}}
    event = {
        "type": "object",
        "required": ["idempotency_key", "state", "position", "replay"],
        "description": "What is known of an event. `decided` carries the agreed result; "
                       "`diverged` the Clerk's divergence report.",
        "properties": {
            "idempotency_key": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "decided", "diverged"]},
            "position": {"oneOf": [_ref("Position"), {"type": "null"}],
                         "description": "input topic position of the request (for GET: of the "
                                        "request that owns the key)"},
            "replay": {"type": "boolean",
                       "description": "the outcome is the original outcome of an earlier request "
                                      "with this key (`duplicate_of`)"},
            "event_name": {"type": ["string", "null"]},
            "outcome": _ref("Outcome"),
            "duplicate_of": {"oneOf": [_ref("Position"), {"type": "null"}]},
            "stream_time": {"type": "integer"},
            "domain_version": {"type": "string"},
            "digest": {"type": "string"},
            "instances": {"type": "array", "items": {"type": "string"}},
            "divergence": {
                "type": "object",
                "description": "the Clerk's divergence report: `input`, `cause` (mismatch, or version_mismatch when the copies name different domain versions), "
                               "`idempotency_key`, `event_name` and `stream_time` as the copy of "
                               "instance `named_by` says them, `decided` (null: nothing was published), "
                               "and `copies`: per copy its `instance`, `digest`, `body` (the output "
                               "the Clerk digested; null with `body_truncated` true and a "
                               "`body_prefix` when it exceeds 16 KiB) and `body_bytes`"},
            "message": {"type": "string"},
        },
    }
    error = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable code"},
            "message": {"type": "string", "description": "what is wrong, for people"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "reason", "message"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"},
                               "message": {"type": "string"}}}},
        },
    }
    return {
        "EventRequest": _event_request(domain),
        "Position": position,
        "Outcome": outcome,
        "Entity": entity,
        "Event": event,
        "Error": error,
        "EntityState": {"type": "object", "required": ["key", "state", "version", "input"],
                        "properties": {"key": {"type": "string"}, "state": {"type": "object"},
                                       "version": {"type": "integer", "minimum": 1},
                                       "input": {"oneOf": [_ref("Position"), {"type": "null"}]}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Readiness": {"type": "object", "required": ["ready", "checks"],
                      "properties": {"ready": {"type": "boolean"},
                                     "checks": {"type": "object",
                                                "additionalProperties": {"type": "boolean"}},
                                     "message": {"type": "string"},
                                     "domain": {"type": "string",
                                                "description": "the domain this API serves (DOCKET_DOMAIN)"},
                                     "blocked_partitions": {
                                         "type": "array",
                                         "description": "instances stopped at a domain version they may "
                                                        "not judge with (an activation their code does not "
                                                        "know, or a version limit); present only when there "
                                                        "are any",
                                         "items": {"type": "object",
                                                   "required": ["instance", "partition", "offset", "version"],
                                                   "properties": {
                                                       "instance": {"type": "string"},
                                                       "partition": {"type": "integer"},
                                                       "offset": {"type": "integer"},
                                                       "version": {"type": "string"},
                                                       "judges_with": {"type": "array",
                                                                       "items": {"type": "string"}}}}},
                                     "blocked_message": {"type": "string"}}},
    }


def document(domain, *, timeout_ms: int, ttl_ms: int, auth: bool = True) -> dict:
    """The OpenAPI document for ``domain``; with examples when it has a kit."""
    kit = _kit(domain)
    entity = kit.example_entity.split(":", 1) if kit is not None else (None, None)
    secured = [{"bearer": []}] if auth else []
    auth_errors = _AUTH_ERRORS if auth else {}
    key_param = {"name": "Idempotency-Key", "in": "header", "required": True,
                 "description": f"identifies the request; a repeat within {ttl_ms} ms (stream time) gets the "
                                "original outcome. An RFC 8941 string (`\"key\"`) is accepted too. One header "
                                "field with one key: a repeated field, a list (`a, b`) or parameters (`a;x=1`) "
                                "are refused with 400.",
                 "schema": {"type": "string", "pattern": KEY_PATTERN}, "example": EXAMPLE_KEY}
    prefer_param = {"name": "Prefer", "in": "header", "required": False,
                    "description": f"RFC 7240: `wait=N` waits at most N seconds (never more than {timeout_ms} ms) "
                                   "for the agreed result; `respond-async` answers 202 once Kafka has the event",
                    "schema": {"type": "string"}}
    coding_param = {"name": "Content-Encoding", "in": "header", "required": False,
                    "description": "the body's coding, one of gzip, deflate (zlib or raw), br, zstd or identity "
                                   "(any case); it is decoded whole (at most 64 KiB, up to 64 gzip members or zstd "
                                   "frames) or refused",
                    "schema": {"type": "string"}}
    paths = {
        "/v1/events": {"post": {
            "operationId": "submitEvent",
            "summary": "Submit an event and wait for the outcome the instances agreed on",
            "security": secured,
            "parameters": [key_param, prefer_param, coding_param],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("EventRequest"),
                                                             **_example(example_event(domain))}}},
            "responses": {
                "200": _json(_ref("Event"), "applied: the agreed outcome", _REPLAYED),
                "202": _json(_ref("Event"), f"not decided within {timeout_ms} ms: poll `Location`",
                             {"Location": {"schema": {"type": "string"}, "required": True,
                                           "description": "/v1/events/{idempotency_key}"}, **_RETRY_AFTER}),
                "400": _error("invalid request: field-level `errors` (also a body that is not JSON, `invalid_json`, "
                              "or does not decode whole from its Content-Encoding, reason `unreadable_body`)"),
                **auth_errors,
                "409": _json({"allOf": [_ref("Event"), _ref("Error")]},
                             "rejected by the domain's rules"
                             + (f" (e.g. `{kit.example_rejection}`)" if kit is not None else "")
                             + ": `error` is the reason",
                             _REPLAYED),
                "408": _error("the body did not arrive whole within DOCKET_API_READ_TIMEOUT_MS of its head; "
                              "nothing was accepted, and the connection is closed"),
                "413": _error("body over the size limit (as sent, or decoded from its Content-Encoding)"),
                "501": _error("a Transfer-Encoding other than chunked alone; the connection is closed"),
                "417": _error("an Expect header other than 100-continue; the connection is closed"),
                "415": _error("body is not application/json, or its Content-Encoding is not gzip, deflate, "
                              "br, zstd or identity",
                              {"Accept-Encoding": {"schema": {"type": "string"},
                                                   "description": "the content codings a body may be sent in "
                                                                  "(with a Content-Encoding refusal)"}}),
                "422": _error("the Idempotency-Key was used for a different request"),
                "502": _error("the instances disagreed on this event: a fault was detected and no outcome "
                              "was published (a repeat of that request gets the same answer, `replay: true`)",
                              _REPLAYED),
                "503": _error("Kafka is unreachable: the event was not accepted; or Kafka did not acknowledge it in "
                               "time and its outcome is unknown (`message` says which): retry with the same "
                               "Idempotency-Key within the idempotency TTL", _RETRY_AFTER),
            },
        }},
        "/v1/events/{idempotency_key}": {"get": {
            "operationId": "getEvent",
            "summary": "The state of a submitted event: pending, decided, diverged (404: unknown)",
            "security": secured,
            "parameters": [{"name": "idempotency_key", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": KEY_PATTERN}, "example": EXAMPLE_KEY}],
            "responses": {
                "200": _json(_ref("Event"), "pending, decided (with the outcome) or diverged"),
                "400": _error("not a valid idempotency key"),
                **auth_errors,
                "404": _error(f"unknown: never submitted, or more than {ttl_ms} ms ago"),
                "503": _error("not connected to Kafka yet", _RETRY_AFTER),
            },
        }},
        "/v1/entities/{type}/{id}": {"get": {
            "operationId": "getEntity",
            "summary": "The latest agreed state of entity `{type}:{id}`"
                       + (f" ({domain.name}: `{kit.entity_pattern}`)" if kit is not None else "")
                       + " and its version",
            "security": secured,
            "parameters": [
                {"name": "type", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": ENTITY_TYPE_PATTERN}, **_example(entity[0])},
                {"name": "id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": ENTITY_ID_PATTERN}, **_example(entity[1])},
            ],
            "responses": {
                "200": _json(_ref("EntityState"), "the agreed state"),
                "400": _error("not a valid entity type or id"),
                **auth_errors,
                "404": _error("no agreed change of this entity"),
                "503": _error("not connected to Kafka yet", _RETRY_AFTER),
            },
        }},
        "/healthz": {"get": {
            "operationId": "health", "summary": "The process is up", "security": [],
            "responses": {"200": _json(_ref("Health"), "up")}}},
        "/readyz": {"get": {
            "operationId": "ready", "security": [],
            "summary": "Ready: the producer is connected and the results consumer has caught up",
            "responses": {"200": _json(_ref("Readiness"), "ready"),
                          "503": _json(_ref("Readiness"), "not ready; `message` says why")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "docket", "version": "1",
                 "description": "Submit events to docket and read the outcomes its redundant instances "
                                "agreed on. Errors are `{error, message, errors[{field, reason, message}]}`."},
        "paths": paths,
        "components": {"schemas": _schemas(domain)},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                           "description": "a token from DOCKET_API_TOKENS"}}
    return doc
