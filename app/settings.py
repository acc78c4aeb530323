"""docket's configuration: one place, environment variables with a ``DOCKET_`` prefix.

Every component reads its settings through :func:`load`. The README's configuration
table is generated from :data:`SETTINGS` (``docket config``), so the two cannot drift.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A DOCKET_* variable has a value docket cannot use; the message says which and why."""


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:$DOCKET_BROKER_PORT", "Kafka bootstrap servers every component and command "
            "connects to; unset: the local broker (127.0.0.1:9092 with DOCKET_BROKER_PORT's default)"),
    Setting("DOCKET_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "how every Kafka client docket opens connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    Setting("DOCKET_KAFKA_SASL_MECHANISM", "", "SASL mechanism under SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with them, refused without)"),
    Setting("DOCKET_KAFKA_USERNAME", "", "SASL user name"),
    Setting("DOCKET_KAFKA_PASSWORD", "", "SASL password (never logged); or DOCKET_KAFKA_PASSWORD_FILE, a file holding it (one trailing newline ignored)"),
    Setting("DOCKET_KAFKA_PASSWORD_FILE", "", "file holding the SASL password, instead of DOCKET_KAFKA_PASSWORD"),
    Setting("DOCKET_KAFKA_SSL_CA_FILE", "", "PEM file of the CA(s) that sign the brokers' certificates, under SSL and SASL_SSL (default: the system's CAs); host names are verified"),
    Setting("DOCKET_KAFKA_SSL_CERT_FILE", "", "PEM client certificate, for brokers that require one (ssl.client.auth=required)"),
    Setting("DOCKET_KAFKA_SSL_KEY_FILE", "", "PEM private key of the client certificate"),
    Setting("DOCKET_KAFKA_SSL_KEY_PASSWORD", "", "password of an encrypted client key (or DOCKET_KAFKA_SSL_KEY_PASSWORD_FILE)"),
    Setting("DOCKET_KAFKA_SSL_KEY_PASSWORD_FILE", "", "file holding the client key's password, instead of DOCKET_KAFKA_SSL_KEY_PASSWORD"),
    Setting("DOCKET_KAFKA_CLIENT_ID_PREFIX", "docket", "client.id of every Kafka client is `<prefix>-<component>` (e.g. docket-instance-a, docket-clerk, docket-api, docket-admin), for quotas and broker logs"),
    Setting("DOCKET_KAFKA_REPLICATION_FACTOR", "1", "replication factor of the topics docket creates (`docket topics create`, and the instances' Faust changelog topics); managed clusters usually want 3"),
    Setting("DOCKET_KAFKA_MIN_INSYNC_REPLICAS", "", "min.insync.replicas of the topics docket creates (empty: the broker's default); at most the replication factor"),
    Setting("DOCKET_KAFKA_EXTRA", "", "further aiokafka keyword arguments as a JSON object, e.g. `{\"request_timeout_ms\": 60000}`, applied to the clients docket opens itself (each takes those it accepts; where a component sets one itself, its value wins, with a warning); settings docket owns are refused"),
    Setting("DOCKET_TOPIC_PREFIX", "docket", "prefix of every topic and consumer group docket creates"),
    Setting("DOCKET_PARTITIONS", "8", "partition count of the input, output, results and divergences topics: the most workers one role can scale out to. "
            "Each partition is a batch of its own in each instance, so fewer partitions cost "
            "less CPU per event (README, Performance: on 2 cores in the run of 2026-12-04 16:01, p99 < 100 ms up to 1,000 events/s with 2 partitions, 600 with 8)"),
    Setting("DOCKET_DOMAIN", "inventory", "domain the instances evaluate: a registered name (`inventory`, `accounts`) or module:attribute; "
            "the pipeline and the REST API take any domain; `docket demo`, `docket chaos`, the OpenAPI examples and "
            "the `make run` banner take the domain's kit (app/domains/kit.py), which both built-in domains have, and "
            "fault injection corrupts an entity's integer field in any domain"),
    Setting("DOCKET_DOMAIN_VERSION_LIMIT", "0", "newest version of the domain this worker judges with (0: every version its code registers); "
            "an activation of a later one blocks its partition here as if the code did not know it: a staged "
            "rollout, and how the tests run an instance of older code (specs/versioning.allium)"),
    Setting("DOCKET_INSTANCES", "a,b", "ids of the redundant instances (the Clerk reads their output topics): ASCII letters, digits, '-' and '_', not 'clerk'"),
    Setting("DOCKET_REQUIRED_COPIES", "2", "matching copies the Clerk needs before it publishes a result; 1 compares nothing (the Clerk warns at start)"),
    Setting("DOCKET_MAX_LAG", "10000", "offsets an instance may fall behind the most advanced one before the Clerk "
            "reports it; with more instances than DOCKET_REQUIRED_COPIES, also the most decided positions per "
            "partition the Clerk holds for a lagging or stopped instance (its copies of older ones are counted, "
            "not compared), and how far past a position whose copies disagree the others go before it is "
            "reported diverged instead of waiting for such an instance's copy"),
    Setting("DOCKET_FETCH_MAX_WAIT_MS", "20", "longest a worker's Kafka fetch waits for new records (Faust's own is 1500); a longer wait means fewer rounds: less CPU per event on a busy box, more latency for every event on a quiet one (docs/performance.md, 'A longer fetch wait')"),
    Setting("DOCKET_FETCH_MIN_BYTES", "1048576", "bytes of records a worker's Kafka fetch waits for, up to DOCKET_FETCH_MAX_WAIT_MS (Kafka's fetch.min.bytes; 1 returns at the first record)"),
    Setting("DOCKET_FETCH_IDLE_WAIT_MS", "500", "longest a worker's Kafka fetch waits when its last one found no records; such a fetch returns at the first record, so an idle worker asks the broker twice a second instead of every DOCKET_FETCH_MAX_WAIT_MS and an event that finds it idle is fetched at once (0: every fetch waits for a round; docs/performance.md, 'Idle fetches')"),
    Setting("DOCKET_SESSION_TIMEOUT_MS", "10000", "consumer group session timeout of docket's workers: how soon a killed worker's partitions move; 6000 to 90000 (Faust's request timeout)"),
    Setting("DOCKET_COMMIT_CHECK_INTERVAL_MS", "2000", "how often an instance reads back its committed offsets from Kafka (the Warden collects only below them; while Kafka is out of reach it keeps the last ones read)"),
    Setting("DOCKET_IDEMPOTENCY_TTL_MS", "300000", "how long (stream time, ms) the Warden remembers an idempotency key; at most a year (31536000000)"),
    Setting("DOCKET_BATCH_SIZE", "256", "most records a worker takes as one batch: an instance's input records of one partition, the Clerk's copy records"),
    Setting("DOCKET_CACHE_CAPACITY", "100000", "entities the Registrar keeps in memory per worker"),
    Setting("DOCKET_DATA_ROOT", "var", "directory under which each worker keeps its RocksDB data"),
    Setting("DOCKET_BROKER_PORT", "9092", "port of the local broker started by `docket broker start` (1-65535)"),
    Setting("DOCKET_BROKER_DIR", "var/broker", "storage, config and log of the local broker"),
    Setting("DOCKET_BROKER_CACHE", str(_cache_home() / "docket"), "where the broker's jars are cached, shared by every checkout"),
    Setting("DOCKET_EVENT_LOOP", "uvloop", "event loop of the instance and Clerk workers: `uvloop` (libuv's, in C: 8-14% less CPU per event at 150 events/s) or `asyncio` (the standard library's); the REST API always runs on asyncio's"),
    Setting("DOCKET_STOP_TIMEOUT_MS", "30000", "longest an instance or Clerk worker's graceful stop (after SIGTERM or SIGINT) may take, 1 to 3600000: past it, or on a second signal, the worker exits 75 without finishing it (a stop that cannot reach Kafka otherwise never ends); the next start resumes from the last committed offsets, as after a crash. `make run` sends SIGKILL to a component still running 5 s later"),
    Setting("DOCKET_LOG_LEVEL", "notice", "log level of docket's processes (debug, info, notice, warning, error); `notice`, between info and warning, adds to the warnings only the lines a person starting docket wants to see (each instance's `ready` line)"),
    Setting("DOCKET_LOG_FORMAT", "text", "how docket's processes write their log to stderr, Faust's and aiokafka's lines included: `text` (one line per record) or `json` (one JSON object per line: time (ISO-8601 UTC), level, logger, message, pid, and the record's structured extras)"),
    Setting("DOCKET_API_HOST", "127.0.0.1", "address the REST API (`docket api`) listens on: one of this machine's (a name that does not resolve, or another machine's address, refuses the start in one line)"),
    Setting("DOCKET_API_PORT", "8080", "port the REST API listens on"),
    Setting("DOCKET_API_TOKENS", "", "bearer tokens the REST API accepts, comma-separated `name:token`: the name (1-64 of `A-Z a-z 0-9 . _ -`) scopes that client's idempotency keys, the token is RFC 6750's b64token (1 or more of `A-Z a-z 0-9 - . _ ~ + /`, then only `=` padding); an entry without `:` is a bare token, named `token-<hash>`; a name or a token given twice, or any other character, is refused; required (`docket api` refuses to start without one)"),
    Setting("DOCKET_API_TIMEOUT_MS", "5000", "how long POST /v1/events waits for the agreed result before answering 202; at most 3600000"),
    Setting("DOCKET_API_READ_TIMEOUT_MS", "60000", "how long the REST API waits for a client: a connection that has not sent a whole request head within it (from connecting, or since its last answer; idle keep-alive connections too) is closed, and a body not whole within it of its head is answered 408 and the connection closed (nginx's client_header_timeout and client_body_timeout, 60 s); 1 to 3600000"),
    Setting("DOCKET_METRICS_HOST", "127.0.0.1", "address the instances' and the Clerk's web server (/metrics) listens on; `0.0.0.0` for every interface, e.g. in a container scraped from outside; one of this machine's, as for `DOCKET_API_HOST`"),
    Setting("DOCKET_FAUST_METRICS", "on", "`on`: the instances' and the Clerk's /metrics also show Faust's own sensors (`faust_*`: consumer offsets and end offsets per partition, rebalances, commit and send latency); `off`: docket's metrics only"),
    Setting("DOCKET_CLERK_WEB_PORT", "6066", "port of the Clerk's /metrics page in the `make run` stack (the Procfile's `clerk --web-port`)"),
    Setting("DOCKET_INSTANCE_A_WEB_PORT", "6067", "port of instance a's /metrics page in the `make run` stack (the Procfile's `instance --id a --web-port`)"),
    Setting("DOCKET_INSTANCE_B_WEB_PORT", "6068", "port of instance b's /metrics page in the `make run` stack (the Procfile's `instance --id b --web-port`)"),
    Setting("DOCKET_INSTANCE_ID", "", "instance a worker started with `faust -A docket_apps.instance worker` runs, e.g. `a` (`docket instance` takes `--id`)"),
)

_DEFAULTS = {s.env: s.default for s in SETTINGS}


def _raw(env: str) -> str:
    value = os.environ.get(env)
    return _DEFAULTS[env] if value is None or value.strip() == "" else value.strip()


def domain_setting() -> str:
    """DOCKET_DOMAIN's value (its default when unset or blank), without loading or
    checking any other setting."""
    return _raw("DOCKET_DOMAIN")


# A whole number as a setting writes it: ASCII digits, an optional sign. int() also takes
# other scripts' digits ('٣' is 3) and underscores ('1_000'): a value that reads as one
# number and is taken as another (the twelfth fresh-user trial: DOCKET_BROKER_PORT=٣).
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
# The most a whole-number setting may hold unless it says otherwise: Kafka's protocol
# carries partition counts, fetch waits and fetch sizes as 32-bit integers, and 10^20
# passed the check and then failed inside aiokafka ("struct.error: argument out of
# range", a worker that never fetched) or Kafka's admin client (the same trial).
INT32_MAX = 2**31 - 1


def whole_number(name: str, raw: str, minimum: int, maximum: int = INT32_MAX) -> int:
    """``raw`` (a setting's value, e.g. " 8 ") as an int from ``minimum`` to ``maximum``;
    ConfigError naming ``name`` otherwise."""
    text = raw.strip()
    if not WHOLE_NUMBER.fullmatch(text):
        raise ConfigError(f"{name}={raw!r} is not a whole number")
    value = int(text)
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    if value > maximum:
        raise ConfigError(f"{name}={value} must be at most {maximum}")
    return value


def _int(env: str, minimum: int, maximum: int = INT32_MAX) -> int:
    return whole_number(env, _raw(env), minimum, maximum)


_CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def client_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name an API client (the scope of its idempotency keys), or None."""
    if not isinstance(name, str) or not _CLIENT_NAME.fullmatch(name):
        return "must be 1-64 characters of A-Z a-z 0-9 . _ -"
    return None


_NAME_RULE = "1-64 characters of A-Z a-z 0-9 . _ -"


def _name_fault(name: str) -> str:
    """What is wrong with the name part of a ``name:token`` entry, without showing it (a
    bare token with a colon would be a secret cut in two)."""
    if not name:
        return "is empty"
    if len(name) > 64:
        return f"is {len(name)} characters; at most 64"
    return "holds a character outside A-Z a-z 0-9 . _ -"


# RFC 6750, section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN_ALPHABET = frozenset(string.ascii_letters + string.digits + "-._~+/")
TOKEN_RULE = "RFC 6750's b64token: 1 or more of A-Z a-z 0-9 - . _ ~ + /, then only '=' (padding)"


def _shown_char(c: str) -> str:
    if c == " ":
        return "a space"
    if c.isascii() and c.isprintable():
        return repr(c)
    return f"U+{ord(c):04X}"


def token_problem(token: str) -> str | None:
    """What keeps ``token`` from being a bearer token (RFC 6750's b64token), naming the
    first character at fault and where it is, never the token; None when it is one."""
    body = token.rstrip("=")
    if not body:
        return "is empty" if not token else "is only '=' padding"
    for i, c in enumerate(body, 1):
        if c not in _TOKEN_ALPHABET:
            hint = ""
            if c == "=":
                hint = " ('=' may only end a token, as padding)"
            elif c in ";: \t":
                hint = " (entries are separated by ',', a name from its token by the first ':')"
            return f"holds {_shown_char(c)} at character {i} of {len(token)}{hint}"
    return None


def named_token(entry: str) -> tuple[str, str]:
    """(client name, token) of one DOCKET_API_TOKENS entry.

    An entry with a ``:`` is ``name:token``: the name is what comes before the first
    ``:`` and must be a client name (1-64 characters of A-Z a-z 0-9 . _ -), the token the
    rest, not empty (it may hold more colons). An entry without ``:`` is a bare token
    (the older form), named ``token-`` + the first 12 hex digits of its SHA-256 (stable
    for the token, and revealing nothing usable of it). A token is RFC 6750's b64token
    (:data:`TOKEN_RULE`; so it holds no ``:``, ``;``, ``,`` or space). Raises ConfigError
    saying what is wrong, and for a character at fault which one and where, never
    showing the token."""
    name, sep, token = entry.partition(":")
    if sep:
        if client_name_problem(name) is not None:
            raise ConfigError(f"the name before ':' {_name_fault(name)} (a name is {_NAME_RULE}; an entry "
                              "with ':' is name:token, so a bare token cannot contain ':')")
        if not token:
            raise ConfigError(f"client {name!r} has an empty token (name:token)")
    else:
        name, token = "token-" + hashlib.sha256(entry.encode("utf-8")).hexdigest()[:12], entry
    problem = token_problem(token)
    if problem:
        whose = f"the token of client {name!r}" if sep else "the token"
        raise ConfigError(f"{whose} {problem}; a token is {TOKEN_RULE}")
    return name, token


def named_tokens(entries, what: str = "DOCKET_API_TOKENS") -> tuple[tuple[str, str], ...]:
    """(client name, token) of each entry (:func:`named_token`); ConfigError, starting
    with ``what``, for an entry that is not one, for two entries with one name (each name
    is its own idempotency key space) and for one token given twice (under two names a
    token would be one client or the other, depending on the order)."""
    clients = []
    entries = list(entries)
    for i, entry in enumerate(entries, 1):
        try:
            clients.append(named_token(entry))
        except ConfigError as exc:
            where = f" entry {i} of {len(entries)}:" if len(entries) > 1 else ""
            raise ConfigError(f"{what}:{where} {exc}") from None
    by_token: dict[str, list[str]] = {}
    for name, token in clients:
        by_token.setdefault(token, []).append(name)
    for holders in by_token.values():
        if len(set(holders)) > 1:
            raise ConfigError(f"{what} gives one token to clients {' and '.join(holders)}; a token names the one "
                              "client whose idempotency keys it uses, so give each client a token of its own")
        if len(holders) > 1:
            raise ConfigError(f"{what} gives the token of client {holders[0]} twice; give it once")
    names = [name for name, _ in clients]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{what} names client(s) {', '.join(twice)} twice; each name scopes its own "
                          "idempotency keys, so give each token its own name (name:token,...)")
    return tuple(clients)


def _tokens(env: str) -> tuple[tuple[str, str], ...]:
    return named_tokens((part.strip() for part in _raw(env).split(",") if part.strip()), env)


def api_tokens_absence() -> str:
    """Why DOCKET_API_TOKENS gives no token, as the end of a sentence starting with the
    variable's name: it is not set, it is set but empty, or what it holds (only commas
    and white space, so it can be shown) parses to no entry."""
    raw = os.environ.get("DOCKET_API_TOKENS")
    if raw is None:
        return "is not set"
    if raw == "":
        return "is set but empty"
    return f"holds no token (its value, {raw!r}, has no entry between its commas)"


MAX_IDEMPOTENCY_TTL_MS = 365 * 86_400_000
# Kafka's consumer-group session timeout as docket's workers may use it: at least the
# 6 s Kafka's default group.min.session.timeout.ms allows, at most Faust's 90 s request
# timeout (Faust refuses more, with a traceback from every worker at start: the twelfth
# fresh-user trial's 100000)
MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS = 6_000, 90_000


def _at_most(env: str, value: int, maximum: int) -> int:
    if value > maximum:
        raise ConfigError(f"{env}={value} must be at most {maximum}")
    return value


# host:port, as aiokafka reads it: the port may be left out (9092), an IPv6 address goes
# in brackets
_BOOTSTRAP_SERVER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]/,]+))(?::(?P<port>[0-9]+))?")


def _bootstrap(raw: str) -> str:
    """DOCKET_KAFKA_BOOTSTRAP as given (stripped; "" when unset), checked: host:port
    entries, comma-separated, an IPv6 address in brackets, each port 1-65535 (or left
    out: aiokafka then takes 9092). A
    ConfigError names the entry otherwise: " , ", "127.0.0.1:99999" and "[::1" reached
    the Kafka client and were reported as "cannot reach Kafka at ..." (the twelfth
    fresh-user trial), and an empty entry ("h:1,,h:2") was dropped silently."""
    text = raw.strip()
    if not text:
        return ""
    entries = [entry.strip() for entry in text.split(",")]
    for i, entry in enumerate(entries, 1):
        where = f" (entry {i} of {len(entries)})" if len(entries) > 1 else ""
        found = _BOOTSTRAP_SERVER.fullmatch(entry)
        if found is None:
            raise ConfigError(f"DOCKET_KAFKA_BOOTSTRAP={raw!r}: {entry!r}{where} is not host:port (an IPv6 address "
                              "in brackets: [::1]:9092); separate servers with single commas")
        if found["port"] is not None and not 1 <= int(found["port"]) <= 65535:
            raise ConfigError(f"DOCKET_KAFKA_BOOTSTRAP={raw!r}: {entry!r}{where} names port {found['port']}, "
                              "not a TCP port (1-65535)")
    return ",".join(entries)


def _directory(env: str) -> Path:
    """The directory a path setting names, absolute; ConfigError when something other
    than a directory is there, or in place of one of its parents (a file: every command
    using it ended in NotADirectoryError or FileExistsError tracebacks, the twelfth
    fresh-user trial). A directory that does not exist yet is fine: it is made."""
    path = Path(_raw(env)).expanduser().resolve()
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "" if place == path else f" ({place} is not a directory)"
                raise ConfigError(f"{env}={_raw(env)!r} is not a directory{where}: point it at a directory")
            break
    return path


def _port(env: str) -> int:
    port = _int(env, 0)
    if port > 65535:
        raise ConfigError(f"{env}={port} is not a TCP port (0-65535; 0 picks a free one)")
    return port


def _instances(env: str) -> tuple[str, ...]:
    entries = [part.strip() for part in _raw(env).split(",")]
    ids = tuple(entry for entry in entries if entry)
    if not ids:
        raise ConfigError(f"{env} names no instance; set it to e.g. 'a,b'")
    if len(ids) != len(entries):
        # 'a,,b' is more likely an id left out than a stray comma: every id names
        # topics and consumer groups, so a guess here would run another deployment
        empty = [str(i) for i, entry in enumerate(entries, 1) if not entry]
        raise ConfigError(f"{env}={_raw(env)!r} has an empty entry (entry {', '.join(empty)} of {len(entries)}); "
                          "name each instance once, separated by single commas, e.g. 'a,b'")
    for ident in ids:
        if instance_id_problem(ident):
            problem = instance_id_problem(ident).removeprefix("an instance id ")
            raise ConfigError(f"{env}: instance id {ident!r} {problem}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{env}={_raw(env)!r} names an instance twice")
    return ids


# Instance ids another role's names hold: the Clerk's consumer group, data directory and
# changelog topics are <prefix>-clerk, as an instance's are <prefix>-<id> (an instance
# "clerk" joined the Clerk's group: the twelfth fresh-user trial).
RESERVED_INSTANCE_IDS = ("clerk",)


def instance_id_problem(ident: str) -> str | None:
    """Why ``ident`` cannot name an instance (it names topics, consumer groups and data
    directories), or None: it must be 1 or more of ASCII letters, digits, '-' and '_',
    and none of RESERVED_INSTANCE_IDS."""
    if not ident:
        return "an instance id must not be empty"
    if not ident.isascii() or not ident.replace("-", "").replace("_", "").isalnum():
        return "an instance id may only use ASCII letters, digits, '-' and '_'"
    if ident.lower() in RESERVED_INSTANCE_IDS:
        # in any case: on a case-insensitive file system <prefix>-Clerk is <prefix>-clerk
        return (f"an instance id may not be {ident.lower()!r} in any case: the Clerk's consumer group and data "
                f"directory are <prefix>-{ident.lower()}")
    return None


def _instance_id(env: str) -> str:
    ident = _raw(env)
    problem = ident and instance_id_problem(ident)
    if problem:
        raise ConfigError(f"{env}={ident!r}: {problem}")
    return ident


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    topic_prefix: str
    domain: str
    partitions: int
    instances: tuple[str, ...]
    required_copies: int
    max_lag: int
    fetch_max_wait_ms: int
    fetch_min_bytes: int
    fetch_idle_wait_ms: int
    session_timeout_ms: int
    commit_check_interval_ms: int
    idempotency_ttl_ms: int
    batch_size: int
    cache_capacity: int
    data_root: Path
    broker_port: int
    broker_dir: Path
    broker_cache: Path
    log_level: str
    log_format: str = "text"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # (client name, token) per DOCKET_API_TOKENS entry
    api_clients: tuple[tuple[str, str], ...] = ()
    api_timeout_ms: int = 5000
    api_read_timeout_ms: int = 60_000
    clerk_web_port: int = 6066
    # the `make run` stack's instances a and b (DOCKET_INSTANCE_A_WEB_PORT, _B_)
    instance_web_ports: tuple[tuple[str, int], ...] = (("a", 6067), ("b", 6068))
    metrics_host: str = "127.0.0.1"
    faust_metrics: bool = True
    # DOCKET_KAFKA_* connection settings (app/kafka_config.py KafkaConnection); None:
    # app.kafka_config reads them from the environment when asked
    kafka: object = field(default=None, compare=False, repr=False)
    # DOCKET_INSTANCE_ID: "" when unset (only docket_apps.instance needs it)
    instance_id: str = ""
    # DOCKET_DOMAIN_VERSION_LIMIT: 0 for none
    domain_version_limit: int = 0
    # DOCKET_STOP_TIMEOUT_MS (agents/stopping.py StopDeadline)
    stop_timeout_ms: int = 30_000

    @property
    def api_tokens(self) -> tuple[str, ...]:
        """The bearer tokens of DOCKET_API_TOKENS, without their names."""
        return tuple(token for _, token in self.api_clients)

    # Topic names: the one place that spells them.
    @property
    def input_topic(self) -> str:
        return f"{self.topic_prefix}.input"

    def output_topic(self, instance: str) -> str:
        return f"{self.topic_prefix}.output.{instance}"

    @property
    def results_topic(self) -> str:
        return f"{self.topic_prefix}.results"

    @property
    def divergences_topic(self) -> str:
        return f"{self.topic_prefix}.divergences"

    @property
    def entities_topic(self) -> str:
        """Compacted: the latest agreed state of each entity, kept by the Clerk."""
        return f"{self.topic_prefix}.entities"

    @property
    def status_topic(self) -> str:
        """Compacted: each instance's state per input partition p, as far as others
        must know it (blocked at an activation, or judging with a version;
        app/versions.py), on partition p, keyed ``<instance>:<p>``."""
        return f"{self.topic_prefix}.status"

    def all_topics(self) -> list[str]:
        return [
            self.input_topic,
            *(self.output_topic(i) for i in self.instances),
            self.results_topic,
            self.divergences_topic,
            self.entities_topic,
            self.status_topic,
        ]

    def app_id(self, role: str) -> str:
        """Faust app id, which is also the consumer group: ``<prefix>-<role>``."""
        return f"{self.topic_prefix}-{role}"


def log_settings() -> tuple[str, str]:
    """(DOCKET_LOG_LEVEL, DOCKET_LOG_FORMAT), lower case, checked: ConfigError naming the
    variable and its value as given for a level other than debug, info, notice, warning
    (or warn), error, or a format other than text, json. Read alone (app/logs.py) by commands that need no other setting."""
    level = _raw("DOCKET_LOG_LEVEL").lower()
    level = {"warn": "warning"}.get(level, level)  # Faust's and logging's other spelling
    if level not in {"debug", "info", "notice", "warning", "error"}:
        raise ConfigError(f"DOCKET_LOG_LEVEL={_raw('DOCKET_LOG_LEVEL')!r} must be one of debug, info, notice, "
                          f"warning, error")
    fmt = _raw("DOCKET_LOG_FORMAT").lower()
    if fmt not in {"text", "json"}:
        raise ConfigError(f"DOCKET_LOG_FORMAT={_raw('DOCKET_LOG_FORMAT')!r} must be text or json")
    return level, fmt


def event_loop_setting() -> str:
    """DOCKET_EVENT_LOOP, lower case, checked (app/event_loop.py): ConfigError naming
    the variable for anything but uvloop or asyncio. Read alone, before any other
    setting, by every command that starts an event loop."""
    name = _raw("DOCKET_EVENT_LOOP").lower()
    if name not in {"uvloop", "asyncio"}:
        raise ConfigError(f"DOCKET_EVENT_LOOP={_raw('DOCKET_EVENT_LOOP')!r} must be uvloop or asyncio")
    return name


def _switch(env: str) -> bool:
    raw = _raw(env).lower()
    if raw in {"on", "true", "1", "yes"}:
        return True
    if raw in {"off", "false", "0", "no"}:
        return False
    raise ConfigError(f"{env}={_raw(env)!r} must be on or off")


def load() -> Settings:
    prefix = _raw("DOCKET_TOPIC_PREFIX")
    if not prefix.isascii() or not all(c.isalnum() or c in "._-" for c in prefix):
        # Kafka's rule for topic names; a non-ASCII letter passed and Kafka refused the
        # topics with "error 17" (the twelfth fresh-user trial)
        raise ConfigError(f"DOCKET_TOPIC_PREFIX={prefix!r} may only use ASCII letters, digits, '.', '_' and '-'")
    level, log_format = log_settings()
    instances = _instances("DOCKET_INSTANCES")
    required = _int("DOCKET_REQUIRED_COPIES", 1)
    if required > len(instances):
        raise ConfigError(
            f"DOCKET_REQUIRED_COPIES={required} exceeds the {len(instances)} instances in DOCKET_INSTANCES"
        )
    broker_port = _at_most("DOCKET_BROKER_PORT", _int("DOCKET_BROKER_PORT", 1), 65535)
    # unset: the local broker, on its configured port (so that every command, not only
    # the stack's components, finds the broker `make run` started on another port)
    bootstrap = _bootstrap(os.environ.get("DOCKET_KAFKA_BOOTSTRAP") or "") or f"127.0.0.1:{broker_port}"
    return Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        domain=_raw("DOCKET_DOMAIN"),
        partitions=_int("DOCKET_PARTITIONS", 1),
        instances=instances,
        required_copies=required,
        max_lag=_int("DOCKET_MAX_LAG", 1),
        fetch_max_wait_ms=_int("DOCKET_FETCH_MAX_WAIT_MS", 1),
        fetch_min_bytes=_int("DOCKET_FETCH_MIN_BYTES", 1),
        fetch_idle_wait_ms=_at_most("DOCKET_FETCH_IDLE_WAIT_MS", _int("DOCKET_FETCH_IDLE_WAIT_MS", 0), 10_000),
        session_timeout_ms=_int("DOCKET_SESSION_TIMEOUT_MS", MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS),
        commit_check_interval_ms=_int("DOCKET_COMMIT_CHECK_INTERVAL_MS", 100),
        # a year at most: the API looks back one TTL from now for the keys it knows, and a
        # TTL reaching before 1970 left it never ready, blaming Kafka (the same trial)
        idempotency_ttl_ms=_int("DOCKET_IDEMPOTENCY_TTL_MS", 1, MAX_IDEMPOTENCY_TTL_MS),
        batch_size=_int("DOCKET_BATCH_SIZE", 1),
        cache_capacity=_int("DOCKET_CACHE_CAPACITY", 1),
        data_root=_directory("DOCKET_DATA_ROOT"),
        broker_port=broker_port,
        broker_dir=_directory("DOCKET_BROKER_DIR"),
        broker_cache=_directory("DOCKET_BROKER_CACHE"),
        log_level=level,
        log_format=log_format,
        api_host=_raw("DOCKET_API_HOST"),
        api_port=_port("DOCKET_API_PORT"),
        api_clients=_tokens("DOCKET_API_TOKENS"),
        api_timeout_ms=_int("DOCKET_API_TIMEOUT_MS", 1, 3_600_000),
        api_read_timeout_ms=_at_most("DOCKET_API_READ_TIMEOUT_MS", _int("DOCKET_API_READ_TIMEOUT_MS", 1), 3_600_000),
        clerk_web_port=_port("DOCKET_CLERK_WEB_PORT"),
        instance_web_ports=(("a", _port("DOCKET_INSTANCE_A_WEB_PORT")), ("b", _port("DOCKET_INSTANCE_B_WEB_PORT"))),
        metrics_host=_raw("DOCKET_METRICS_HOST"),
        faust_metrics=_switch("DOCKET_FAUST_METRICS"),
        kafka=load_kafka(),
        instance_id=_instance_id("DOCKET_INSTANCE_ID"),
        domain_version_limit=_int("DOCKET_DOMAIN_VERSION_LIMIT", 0),
        stop_timeout_ms=_at_most("DOCKET_STOP_TIMEOUT_MS", _int("DOCKET_STOP_TIMEOUT_MS", 1), 3_600_000),
    )


def load_kafka():
    """The validated DOCKET_KAFKA_* connection settings (app/kafka_config.py)."""
    from app.kafka_config import load_connection

    return load_connection()

