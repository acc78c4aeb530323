"""How docket connects to Kafka: one set of connection settings for every client.

Every Kafka client docket opens (the instances' and the Clerk's Faust apps, the side
consumers beside them, the REST API's client, the admin commands, the chaos harness,
the benchmarks, the tests' readers) takes its security and client settings from
:func:`client_kwargs` (aiokafka keyword arguments) or :func:`faust_kwargs` (Faust App
settings), both built from one :class:`KafkaConnection` that :func:`load_connection`
reads from the ``DOCKET_KAFKA_*`` variables (listed in app/settings.py SETTINGS).

Invalid combinations are :class:`~app.settings.ConfigError` at load time, naming the
variable. A broker that refuses the credentials, or whose certificate the configured CA
does not vouch for, is :class:`KafkaAuthError` from :func:`check_connection` within
seconds (aiokafka itself would log the failure and retry the bootstrap forever). No
message or ``repr`` here ever contains a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.settings import ConfigError, whole_number

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})

# aiokafka keyword arguments docket sets itself (from the settings above, or because
# its correctness depends on them: isolation level, idempotence, group, serialisers);
# DOCKET_KAFKA_EXTRA may not set them.
RESERVED_EXTRA = frozenset({
    "bootstrap_servers", "client_id", "security_protocol", "sasl_mechanism", "sasl_plain_username",
    "sasl_plain_password", "ssl_context", "group_id", "group_instance_id", "isolation_level",
    "enable_idempotence", "transactional_id", "enable_auto_commit", "auto_offset_reset",
    "key_serializer", "value_serializer", "key_deserializer", "value_deserializer",
    "partitioner", "loop", "api_version", "acks",
})

KINDS = ("consumer", "producer", "admin")


class KafkaAuthError(ConfigError):
    """Kafka answered but refused docket's credentials or TLS settings; the message names
    the setting to fix. Retrying cannot help, so components exit with it at start."""


def _env(env: Mapping[str, str], name: str, default: str = "") -> str:
    value = env.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _accepted_args(kind: str) -> frozenset[str]:
    """Keyword arguments the aiokafka client of ``kind`` accepts."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    cls = {"consumer": AIOKafkaConsumer, "producer": AIOKafkaProducer, "admin": AIOKafkaAdminClient}[kind]
    return frozenset(p.name for p in inspect.signature(cls.__init__).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class KafkaConnection:
    """Validated connection settings. ``password`` and ``ssl_key_password`` never appear
    in ``repr`` (nor anywhere else docket prints)."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_source: str = "DOCKET_KAFKA_PASSWORD"  # the variable the password came from
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    client_id_prefix: str = "docket"
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in TLS_PROTOCOLS

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    def client_id(self, component: str) -> str:
        """``client.id`` of ``component``'s clients: ``<prefix>-<component>``."""
        return f"{self.client_id_prefix}-{component}"


def _read_secret(env: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """(secret, the variable it came from) of NAME or NAME_FILE (the file's content, one
    trailing newline removed); ConfigError if both are set or the file cannot be read."""
    direct, file_var = env.get(name) or None, name + "_FILE"
    path = _env(env, file_var)
    if direct is not None and path:
        raise ConfigError(f"{name} and {file_var} are both set; set one of them")
    if not path:
        return direct, name
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file_var}={path!r} cannot be read ({exc.strerror or exc}); "
                          "point it at a file holding the secret") from None
    secret = text[:-1] if text.endswith("\n") else text
    secret = secret[:-1] if secret.endswith("\r") else secret
    if not secret:
        raise ConfigError(f"{file_var}={path!r} is empty")
    return secret, file_var


def _file(env: Mapping[str, str], name: str) -> Path | None:
    raw = _env(env, name)
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_file():
        # a directory is there, say (the twelfth fresh-user trial's /tmp read "no such file")
        what = "a directory, not a file" if path.is_dir() else "no such file" if not path.exists() else "not a file"
        raise ConfigError(f"{name}={raw!r}: {what}")
    return path


# Kafka's protocol carries a replication factor as a 16-bit integer (CreateTopics): a
# larger one passed and then failed in the admin client's encoder (the twelfth trial)
REPLICAS_MAX = 2**15 - 1


def _positive(env: Mapping[str, str], name: str, default: str) -> int | None:
    raw = _env(env, name, default)
    if raw == "":
        return None
    return whole_number(name, raw, 1, REPLICAS_MAX)


def _extra(env: Mapping[str, str]) -> dict[str, object]:
    raw = _env(env, "DOCKET_KAFKA_EXTRA")
    if not raw:
        return {}
    def unique(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"DOCKET_KAFKA_EXTRA names {', '.join(map(repr, twice))} more than once; give each once")
        return dict(pairs)

    try:
        extra = json.loads(raw, object_pairs_hook=unique)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"DOCKET_KAFKA_EXTRA is not JSON ({exc}); give a JSON object of aiokafka "
                          'keyword arguments, e.g. {"request_timeout_ms": 60000}') from None
    if not isinstance(extra, dict):
        raise ConfigError("DOCKET_KAFKA_EXTRA must be a JSON object of aiokafka keyword arguments, "
                          f"not {type(extra).__name__}")
    known = frozenset().union(*(_accepted_args(k) for k in KINDS))
    for key in extra:
        if key in RESERVED_EXTRA:
            raise ConfigError(f"DOCKET_KAFKA_EXTRA sets {key!r}, which docket sets itself; use its own "
                              "DOCKET_KAFKA_* setting (see `docket config`) or leave it out")
        if key not in known:
            raise ConfigError(f"DOCKET_KAFKA_EXTRA: {key!r} is not a keyword argument of aiokafka's "
                              "AIOKafkaConsumer, AIOKafkaProducer or AIOKafkaAdminClient")
        problem = _extra_value_problem(key, extra[key])
        if problem:
            raise ConfigError(f"DOCKET_KAFKA_EXTRA: {key!r} {problem}, not {json.dumps(extra[key])}")
    return extra


# Arguments whose aiokafka default is None, by the JSON type they take; the other
# None-defaulted ones (callbacks, objects) cannot come from JSON.
_NONE_DEFAULT_TYPES = {"rebalance_timeout_ms": int, "max_poll_records": int, "compression_type": str,
                       "client_rack": str, "sasl_kerberos_domain_name": str}


def _extra_value_problem(key: str, value: object) -> str | None:
    """What is wrong with ``value`` for the aiokafka argument ``key`` (judged by the type
    of its default in the clients that take it), or None. A wrong type would fail deep
    inside aiokafka, some only on the first fetch, long after start-up."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    defaults = [params[key].default for cls in (AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient)
                if key in (params := inspect.signature(cls.__init__).parameters)]
    kinds = {type(d) for d in defaults if d is not None} or ({_NONE_DEFAULT_TYPES[key]} if key in _NONE_DEFAULT_TYPES
                                                             else set())
    if kinds == {bool}:
        return None if type(value) is bool else "must be true or false"
    if kinds == {int}:
        return None if type(value) is int and value >= 0 else "must be a whole number, 0 or more"
    if kinds == {str}:
        return None if isinstance(value, str) and value else "must be a non-empty string"
    return "cannot be given as JSON (aiokafka takes an object there)"


def build_ssl_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
                      key_password: str | None) -> ssl.SSLContext:
    """A client TLS context: verifies the broker's certificate and host name against
    ``ca_file`` (the system's CAs without it); presents ``cert_file``/``key_file`` when
    given. ConfigError naming the variable of a file that cannot be used."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"DOCKET_KAFKA_SSL_CA_FILE={str(ca_file)!r} holds no usable PEM certificate ({exc})") from None
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None, key_password)
        except (ssl.SSLError, OSError) as exc:
            what = ("DOCKET_KAFKA_SSL_CERT_FILE / DOCKET_KAFKA_SSL_KEY_FILE (and DOCKET_KAFKA_SSL_KEY_PASSWORD "
                    "for an encrypted key)")
            raise ConfigError(f"the client certificate cannot be loaded from {what}: {exc.__class__.__name__}"
                              f" {getattr(exc, 'reason', None) or ''}".rstrip()) from None
    return context


def load_connection(env: Mapping[str, str] | None = None) -> KafkaConnection:
    """The DOCKET_KAFKA_* connection settings of ``env`` (the process environment by
    default), validated; ConfigError naming the variable at fault. Reads the password
    and key password files and builds the TLS context (so a missing or unreadable file
    is reported here, at start, not at the first connection)."""
    env = os.environ if env is None else env
    protocol = _env(env, "DOCKET_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"DOCKET_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    mechanism = _env(env, "DOCKET_KAFKA_SASL_MECHANISM").upper() or None
    username = _env(env, "DOCKET_KAFKA_USERNAME") or None
    password, password_source = _read_secret(env, "DOCKET_KAFKA_PASSWORD")
    if protocol in SASL_PROTOCOLS:
        if mechanism is None:
            raise ConfigError(f"DOCKET_KAFKA_SECURITY_PROTOCOL={protocol} needs DOCKET_KAFKA_SASL_MECHANISM "
                              f"({', '.join(MECHANISMS)})")
        if mechanism not in MECHANISMS:
            raise ConfigError(f"DOCKET_KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if username is None or password is None:
            missing = " and ".join(n for n, v in (("DOCKET_KAFKA_USERNAME", username),
                                                   ("DOCKET_KAFKA_PASSWORD (or DOCKET_KAFKA_PASSWORD_FILE)",
                                                    password)) if v is None)
            raise ConfigError(f"DOCKET_KAFKA_SASL_MECHANISM={mechanism} needs credentials: set {missing}")
    else:
        given = [n for n, v in (("DOCKET_KAFKA_SASL_MECHANISM", mechanism), ("DOCKET_KAFKA_USERNAME", username),
                                (password_source, password)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} set, but DOCKET_KAFKA_SECURITY_PROTOCOL={protocol} uses no "
                              "SASL; set it to SASL_SSL (or SASL_PLAINTEXT), or unset them")
    ca_file = _file(env, "DOCKET_KAFKA_SSL_CA_FILE")
    cert_file = _file(env, "DOCKET_KAFKA_SSL_CERT_FILE")
    key_file = _file(env, "DOCKET_KAFKA_SSL_KEY_FILE")
    key_password, _ = _read_secret(env, "DOCKET_KAFKA_SSL_KEY_PASSWORD")
    context = None
    if protocol in TLS_PROTOCOLS:
        if key_file is not None and cert_file is None:
            raise ConfigError("DOCKET_KAFKA_SSL_KEY_FILE is set without DOCKET_KAFKA_SSL_CERT_FILE; set both")
        if key_password is not None and key_file is None and cert_file is None:
            raise ConfigError("DOCKET_KAFKA_SSL_KEY_PASSWORD is set without a key (DOCKET_KAFKA_SSL_KEY_FILE)")
        context = build_ssl_context(ca_file, cert_file, key_file, key_password)
    else:
        given = [n for n, v in (("DOCKET_KAFKA_SSL_CA_FILE", ca_file), ("DOCKET_KAFKA_SSL_CERT_FILE", cert_file),
                                ("DOCKET_KAFKA_SSL_KEY_FILE", key_file),
                                ("DOCKET_KAFKA_SSL_KEY_PASSWORD", key_password)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} set, but DOCKET_KAFKA_SECURITY_PROTOCOL={protocol} uses no "
                              "TLS; set it to SSL (or SASL_SSL), or unset them")
    prefix = _env(env, "DOCKET_KAFKA_CLIENT_ID_PREFIX", "docket")
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in prefix):
        raise ConfigError(f"DOCKET_KAFKA_CLIENT_ID_PREFIX={prefix!r} may only use letters, digits, '.', '_' and '-'")
    replication = _positive(env, "DOCKET_KAFKA_REPLICATION_FACTOR", "1")
    min_isr = _positive(env, "DOCKET_KAFKA_MIN_INSYNC_REPLICAS", "")
    if min_isr is not None and min_isr > replication:
        raise ConfigError(f"DOCKET_KAFKA_MIN_INSYNC_REPLICAS={min_isr} exceeds DOCKET_KAFKA_REPLICATION_FACTOR="
                          f"{replication}: no write could ever be acknowledged")
    return KafkaConnection(
        security_protocol=protocol, sasl_mechanism=mechanism if protocol in SASL_PROTOCOLS else None,
        username=username, password=password, password_source=password_source,
        ssl_ca_file=ca_file, ssl_cert_file=cert_file, ssl_key_file=key_file, ssl_key_password=key_password,
        client_id_prefix=prefix, replication_factor=replication, min_insync_replicas=min_isr,
        extra=_extra(env), ssl_context=context,
    )


def _connection(source) -> KafkaConnection:
    """The KafkaConnection of ``source``: a KafkaConnection, Settings (its ``kafka``), or
    None (the process environment)."""
    if isinstance(source, KafkaConnection):
        return source
    if source is not None and getattr(source, "kafka", None) is not None:
        return source.kafka
    return load_connection()


# The arguments of the connection itself: from the DOCKET_KAFKA_* settings only, never
# from a call site's own arguments.
CONNECTION_ARGS = frozenset({"client_id", "security_protocol", "ssl_context", "sasl_mechanism",
                             "sasl_plain_username", "sasl_plain_password"})

_log = logging.getLogger("docket.kafka")
_overridden: set[tuple[str, str, str]] = set()  # (component, kind, key) already warned about


def client_kwargs(settings=None, component: str = "client", kind: str = "consumer", **own) -> dict:
    """All the aiokafka keyword arguments of a ``kind`` client ("consumer", "producer"
    or "admin") of ``component`` (e.g. "api", "admin", "chaos"), for
    ``AIOKafkaConsumer(**client_kwargs(...))``: the connection's (security_protocol,
    sasl_mechanism, sasl_plain_username/password, ssl_context, client_id), the
    DOCKET_KAFKA_EXTRA arguments that ``kind`` accepts, and ``own``, the call site's own
    arguments (bootstrap_servers, group, isolation level, timeouts, batching, ...).

    The rule where they meet: a key of ``own`` wins over DOCKET_KAFKA_EXTRA (docket sets
    it for correctness or latency; the README lists them per component), and the extra
    value is dropped with one warning per component, kind and key. A call site's default
    that the user may change is set on the result instead (``setdefault``). ``own`` may
    not name the connection's arguments (CONNECTION_ARGS): ValueError. ``settings``:
    Settings, a KafkaConnection, or None for the process environment."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    clash = sorted(CONNECTION_ARGS & own.keys())
    if clash:
        raise ValueError(f"client_kwargs: {', '.join(clash)} come from the DOCKET_KAFKA_* settings, "
                         "not from a call site")
    conn = _connection(settings)
    kwargs: dict = {"client_id": conn.client_id(component), "security_protocol": conn.security_protocol}
    if conn.uses_tls:
        kwargs["ssl_context"] = conn.ssl_context
    if conn.uses_sasl:
        kwargs.update(sasl_mechanism=conn.sasl_mechanism, sasl_plain_username=conn.username,
                      sasl_plain_password=conn.password)
    accepted = _accepted_args(kind)
    extra = {k: v for k, v in conn.extra.items() if k in accepted}
    for key in sorted(extra.keys() & own.keys()):
        if extra[key] != own[key] and (component, kind, key) not in _overridden:
            _overridden.add((component, kind, key))
            _log.warning("DOCKET_KAFKA_EXTRA sets %s=%r, but docket's %s %s sets it itself (%r), so the "
                         "extra value is not used there", key, extra[key], component, kind, own[key])
    kwargs.update(extra)
    kwargs.update(own)
    return kwargs


def faust_kwargs(settings=None, component: str = "worker") -> dict:
    """Faust App settings for the same connection: ``broker_credentials``
    (faust.SASLCredentials with the TLS context under SASL_SSL, faust.SSLCredentials
    under SSL), and ``broker_client_id``. (DOCKET_KAFKA_EXTRA does not reach Faust's own
    clients: Faust builds them from its own settings.)"""
    import faust
    from faust.types.auth import SASLMechanism

    conn = _connection(settings)
    out: dict = {"broker_client_id": conn.client_id(component)}
    if conn.uses_sasl:
        out["broker_credentials"] = faust.SASLCredentials(
            username=conn.username, password=conn.password, mechanism=SASLMechanism(conn.sasl_mechanism),
            ssl_context=conn.ssl_context if conn.uses_tls else None)
    elif conn.uses_tls:
        out["broker_credentials"] = faust.SSLCredentials(conn.ssl_context)
    return out


# --------------------------------------------------------------------------- fail fast


def _explain_tls(exc: ssl.SSLError, where: str, conn: KafkaConnection) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = (f"DOCKET_KAFKA_SSL_CA_FILE={str(conn.ssl_ca_file)!r}" if conn.ssl_ca_file
              else "the system's CAs (DOCKET_KAFKA_SSL_CA_FILE is not set)")
        reason = exc.verify_message or str(exc)
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return (f"the TLS certificate of Kafka at {where} does not name that host ({reason}); "
                    "connect through a host name the certificate lists (DOCKET_KAFKA_BOOTSTRAP)")
        return (f"the TLS certificate of Kafka at {where} is not trusted by {ca} ({reason}); set "
                "DOCKET_KAFKA_SSL_CA_FILE to the PEM file of the CA that signed the broker's certificate")
    return (f"the TLS handshake with Kafka at {where} failed ({exc.reason or exc}); check that "
            f"DOCKET_KAFKA_SECURITY_PROTOCOL={conn.security_protocol} is what this listener speaks, and "
            "DOCKET_KAFKA_SSL_CERT_FILE / DOCKET_KAFKA_SSL_KEY_FILE if the broker requires a client certificate")


async def _port_open(host: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to ``host``:``port`` is accepted within ``timeout_s``."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def check_connection(settings=None, bootstrap: str | None = None, timeout_s: float = 10.0,
                           component: str = "check") -> bool:
    """Open one connection to a bootstrap server with the configured security and
    authenticate, then close it. True when one server accepted it, False when none
    answered (unreachable: the caller may wait and try again). Raises KafkaAuthError,
    naming the setting, when a server answered but refused the credentials, the SASL
    mechanism, or the TLS handshake: retrying cannot help. ``timeout_s`` bounds each
    server's attempt (seconds)."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import IllegalSaslStateError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

    conn = _connection(settings)
    bootstrap = bootstrap or getattr(settings, "kafka_bootstrap", None)
    if not bootstrap:
        raise ValueError("check_connection needs a bootstrap address")
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or server
        try:
            port_n = int(port) if port else 9092
        except ValueError:
            raise ConfigError(f"DOCKET_KAFKA_BOOTSTRAP: {server!r} is not host:port") from None
        kwargs = client_kwargs(conn, component, "admin")
        try:
            c = await asyncio.wait_for(create_conn(
                host, port_n, client_id=kwargs["client_id"], request_timeout_ms=int(timeout_s * 1000),
                ssl_context=kwargs.get("ssl_context"), security_protocol=conn.security_protocol,
                sasl_mechanism=conn.sasl_mechanism, sasl_plain_username=conn.username,
                sasl_plain_password=conn.password), timeout_s)
        except SaslAuthenticationFailed:
            raise KafkaAuthError(
                f"Kafka at {server} refused the SASL {conn.sasl_mechanism} login of DOCKET_KAFKA_USERNAME="
                f"{conn.username!r}: check the password in {conn.password_source} and that the user exists "
                f"for {conn.sasl_mechanism} on the cluster") from None
        except UnsupportedSaslMechanismError as exc:
            raise KafkaAuthError(f"Kafka at {server} does not offer DOCKET_KAFKA_SASL_MECHANISM="
                                 f"{conn.sasl_mechanism} ({exc}); set one it enables") from None
        except ssl.SSLError as exc:  # before OSError: SSLError is one
            raise KafkaAuthError(_explain_tls(exc, server, conn)) from None
        except IllegalSaslStateError:
            raise KafkaAuthError(
                f"Kafka at {server} answered, but not as a SASL listener: DOCKET_KAFKA_SECURITY_PROTOCOL="
                f"{conn.security_protocol} does not match the listener there; set the listener's protocol "
                "(PLAINTEXT or SSL when it asks for no login)") from None
        except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
            if conn.security_protocol in ("SSL", "SASL_SSL") and await _port_open(host, port_n, timeout_s):
                # a broker that is down refuses the connection; this one took it and
                # dropped it at the first TLS bytes
                raise KafkaAuthError(
                    f"Kafka at {server} accepted the connection but dropped it at the TLS handshake ({exc!r}): "
                    f"the listener there does not use TLS, so DOCKET_KAFKA_SECURITY_PROTOCOL="
                    f"{conn.security_protocol} does not match it; set the listener's protocol (PLAINTEXT or "
                    "SASL_PLAINTEXT), or point DOCKET_KAFKA_BOOTSTRAP at the cluster's TLS listener") from None
            continue
        except (OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001  unreachable, or not yet up: try the next
            continue
        with contextlib.suppress(Exception):
            c.close()
        return True
    return False
