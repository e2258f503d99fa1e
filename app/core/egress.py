"""The egress guard: every URL a user gives the service (webhooks, later trackers) reaches public addresses only.

A user-given URL is an SSRF vector (OWASP API7): pointed at loopback, a private network or a cloud metadata
address, it makes the service call what only the service should reach. So:
- at submit, `check_url` refuses a bad scheme and a host that is a literal non-public address;
- at send, `post` resolves the host once (`resolve_checked`), refuses it if ANY address is not public, and
  connects to exactly the addresses it checked (no second DNS lookup, so no DNS rebinding), never following
  redirects, with one deadline over connect, send and response and a capped read of the response body.
FT_EGRESS_ALLOW names the CIDRs and host names an operator lets through anyway (internal receivers, tests).
"""

import base64
import ipaddress
import re
import socket
import time
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import httpcore

from app.core.config import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # a NAT64 gateway maps these onto IPv4, private ones included
LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")  # `127.1`, `0x7f000001`, `2130706433`: what inet_aton reads as IPv4
OPAQUE_SEGMENT = re.compile(r"(?=.*[0-9])(?=.*[A-Za-z])[\w-]{16,}|[\w-]{32,}")  # token-like path parts
WRITE_CHUNK = 16 * 1024
ALLOW_HINT = "an operator can let internal receivers through with FT_EGRESS_ALLOW, CIDRs or host names"


class EgressRefused(ValueError):
    """The URL may not be called: a bad scheme, or a host that is (or resolves to) a non-public address."""


class EgressFailed(Exception):
    """The call was allowed but did not complete (DNS, connect, timeout, protocol): worth retrying later."""


class Reply(NamedTuple):
    status: int
    body: bytes  # at most max_response_bytes of it
    peer: str  # the address actually connected to


def redact_url(url: str) -> str:
    """The URL with what may be a secret masked: userinfo, query and fragment values, token-like path parts."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "<unparseable url>"
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{netloc}"
    path = "/".join("***" if OPAQUE_SEGMENT.fullmatch(s) else s for s in parts.path.split("/"))
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    query = f"?{query}" if query else ("?***" if parts.query else "")
    fragment = "#***" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{path}{query}{fragment}"


@lru_cache(maxsize=8)
def allow_list(raw: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """FT_EGRESS_ALLOW parsed (once per value): the allowed networks, and the allowed host names."""
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or entry.replace(".", "").isdigit() or ":" in entry:
                raise EgressRefused(f"FT_EGRESS_ALLOW: {entry!r} is neither a CIDR nor a host name") from None
            names.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(names)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (v4-mapped, 6to4, Teredo, NAT64, v4-compatible), if any."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64 or int(ip) >> 32 == 0:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not_public(ip: IPAddress) -> str | None:
    """What makes the address one the service must not call ("a loopback address", ...), or None: it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and not (ip.is_loopback or ip.is_unspecified):
        inner = _embedded_v4(ip)
        inner_why = why_not_public(inner) if inner is not None else None
        if inner_why:
            return f"an IPv6 form of {inner}, {inner_why}"
        if ip.ipv4_mapped:
            return "a v4-mapped IPv6 address (give the IPv4 address itself)"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            extra = " (cloud metadata lives there)" if kind == "link_local" else ""
            article = "an" if kind == "unspecified" else "a"
            return f"{article} {kind.replace('_', '-')} address{extra}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    return None if ip.is_global else "not a public address"


def _allowed(ip: IPAddress) -> bool:
    networks, _ = allow_list(settings.egress_allow)
    candidates = [ip] + ([ip.ipv4_mapped] if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else [])
    return any(c in net for c in candidates for net in networks if c.version == net.version)


def _name_allowed(host: str) -> bool:
    return host.lower().rstrip(".") in allow_list(settings.egress_allow)[1]


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_url(url: str) -> str:
    """At submit: an http(s) URL with a host that is not a literal non-public address (unless allowed)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise EgressRefused(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise EgressRefused("must be an http:// or https:// URL with a host")
    literal = _literal_address(host)
    why = why_not_public(literal) if literal is not None else None
    if host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
        why = "a loopback name"
    if why and not (_name_allowed(host) or (literal is not None and _allowed(literal))):
        raise EgressRefused(f"host {host} is {why}; the service calls public addresses only; {ALLOW_HINT}")
    return url


def resolve_checked(host: str, port: int) -> list[str]:
    """At send: the host's addresses, each checked, in the order to try; refused if any is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressFailed(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    if not _name_allowed(host):
        for ip in addresses:
            why = why_not_public(ip)
            if why and not _allowed(ip):
                raise EgressRefused(f"host {host} resolves to {ip}, {why}; not called; {ALLOW_HINT}")
    return [str(ip) for ip in addresses]


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.at = seconds, time.monotonic() + seconds

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        """The time a socket wait may take: what is left of the deadline (raising `error` once it has passed)."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise error(f"the {self.seconds:g}s deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every wait is bounded by what is left of one deadline (a trickling peer is cut there)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline):
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_CHUNK):
            self.inner.write(buffer[start : start + WRITE_CHUNK], self.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, left), self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """httpcore's socket layer, connecting only to the addresses `resolve_checked` let through."""

    def __init__(self, deadline: _Deadline):
        self.deadline, self.inner, self.peer = deadline, httpcore.SyncBackend(), ""

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> Any:
        error: Exception = EgressFailed(f"{host} has no address")
        for address in resolve_checked(host, port):
            try:
                stream = self.inner.connect_tcp(address, port, self.deadline.left(timeout, httpcore.ConnectTimeout))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            self.peer = address
            return _DeadlineStream(stream, self.deadline)
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        raise EgressRefused("unix sockets are not reachable from user-given URLs")


def post(url: str, content: bytes, headers: dict[str, str], deadline_s: float, max_response_bytes: int) -> Reply:
    """POST `content` within `deadline_s` in all; at most `max_response_bytes` of the answer are read.

    Raises EgressRefused (do not retry: the URL is not allowed) or EgressFailed (retry: it did not complete).
    A 3xx is returned as it is: redirects are never followed, so a receiver cannot bounce the call inward.
    """
    parts = urlsplit(check_url(url))
    host = parts.hostname or ""
    try:
        ascii_host = host.encode("idna") if not host.isascii() else host.encode()
    except UnicodeError:
        raise EgressRefused(f"host {host!r} is not a valid host name") from None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else ascii_host.decode()
    host_header += f":{parts.port}" if parts.port else ""
    sent = {**headers, "Host": host_header, "Content-Length": str(len(content))}
    if parts.username is not None:  # what httpx did with userinfo: HTTP Basic auth
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        sent["Authorization"] = "Basic " + base64.b64encode(userinfo).decode()
    deadline = _Deadline(deadline_s)
    backend = _PinnedBackend(deadline)
    timeouts = {"connect": deadline_s, "read": deadline_s, "write": deadline_s, "pool": deadline_s}
    request_url = httpcore.URL(scheme=parts.scheme.encode(), host=ascii_host, port=port, target=target.encode())
    failures = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol)
    try:
        with (
            httpcore.ConnectionPool(network_backend=backend, retries=0, max_connections=1) as pool,
            pool.stream(
                "POST", request_url, headers=list(sent.items()), content=content, extensions={"timeout": timeouts}
            ) as response,
        ):
            body = bytearray()
            for chunk in response.iter_stream():
                body += chunk[: max_response_bytes - len(body)]
                if len(body) >= max_response_bytes:
                    break  # the rest is never read: closing the connection drops it
                deadline.left(None, httpcore.ReadTimeout)
            return Reply(response.status, bytes(body), backend.peer)
    except httpcore.TimeoutException:
        raise EgressFailed(f"no complete answer within the {deadline_s:g}s deadline") from None
    except failures as exc:
        raise EgressFailed(f"{type(exc).__name__}: {exc or 'no detail'}") from None
