"""Whether a TCP port can still be listened on, and what to say when it cannot.

docket's servers (the REST API, each worker's /metrics page, the local broker) listen on
ports that are settings. A port another process holds used to end in a traceback from
deep inside aiohttp or Faust (``OSError: [Errno 98] ... address already in use``), and a
second `make run` even printed a "docket is ready" line that the first stack's API had
answered (a fresh-clone user check). So each start checks its ports first and names the
setting to change (specs/integration.allium ServerPortInUseRefusedAtStart).
"""

from __future__ import annotations

import errno
import socket


def bindable(host: str, port: int) -> bool:
    """True if a listening TCP socket could be bound to ``host``:``port`` now as far as
    the port goes. With SO_REUSEADDR, as aiohttp's and the JVM's server sockets have
    it, so a port whose last listener left only TIME_WAIT connections counts as free
    and one with a listener does not. Port 0 (the kernel's choice) is always bindable.
    A host nothing can listen on counts as bindable here: :func:`host_problem` says
    what is wrong with it."""
    if port == 0:
        return True
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
    return True


def host_problem(host: str, what: str, setting: str) -> str | None:
    """Why no server can listen on ``host`` whatever the port, or None: a name that does
    not resolve, or an address that is not this machine's (EADDRNOTAVAIL). ``what``
    names the server, ``setting`` the setting or option that sets the host. Both used
    to end in a traceback from deep inside aiohttp or Faust (the eighth fresh-user
    trial)."""
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return (f"{setting}={host} ({what}) does not resolve ({exc.strerror}): set it to an address of this "
                "machine (127.0.0.1, or 0.0.0.0 for every interface)")
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    return (f"{setting}={host} ({what}) is not an address of this machine, so nothing can listen "
                            "on it: set it to one (127.0.0.1, or 0.0.0.0 for every interface)")
                if exc.errno == errno.EINVAL:  # an IPv6 link-local address without its zone (fe80::1)
                    return (f"{setting}={host} ({what}) cannot be listened on ({exc.strerror}; a link-local IPv6 "
                            "address needs its interface, e.g. fe80::1%eth0): set it to an address of this machine "
                            "(127.0.0.1, or 0.0.0.0 for every interface)")
    return None


def port_in_use(host: str, port: int, what: str, setting: str) -> str:
    """The message for a server that cannot listen on ``host``:``port`` because another
    process does: ``what`` names the server ("the REST API"), ``setting`` the setting or
    option that moves it ("DOCKET_API_PORT (or --port)")."""
    return (f"port {port} on {host} ({what}) is already in use by another process: stop that process "
            f"(another `make run` or `docket stack run`?), or set {setting} to a free port")


def url_host(host: str) -> str:
    """``host`` as the host of a URL: an IPv6 address in brackets (RFC 3986, section
    3.2.2), anything else as it is. "http://::1:8080" is no URL; Faust read its
    "::1" as a port and crashed (the ninth fresh-user trial)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
