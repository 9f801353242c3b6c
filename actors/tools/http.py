"""http_request: outbound HTTP to allowlisted hosts, with SSRF defences. GET is low risk, writes are high.

The host must be on `settings.http_allow_hosts` (`name` or `*.suffix`). It is resolved once, every resolved
address must be public (unless `settings.http_allow_private`), and the connection is pinned to those
addresses, so a DNS answer that changes between the check and the connect (rebinding) is never used.
Redirects are followed only for GET and only on the same scheme, host and port. Every request carries
`Idempotency-Key`; the response body is capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Annotated, Literal

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from actors.tools.registry import Tool, ToolArgs, ToolContext, ToolOutput, fence_data
from store.events import Risk
from store.exceptions import ToolError
from store.settings import Settings
from store.tool_payloads import HttpResult

MAX_URL_CHARS = 2048
MAX_HEADERS = 16
MAX_HEADER_VALUE_CHARS = 1024
MAX_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
TOTAL_TIMEOUT_S = 30.0
USER_AGENT = "docent-agent/0.1"

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# Headers the model may set. Credentials, Host, Cookie and Idempotency-Key are ours to decide, never its.
ALLOWED_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "content-language",
        "if-match",
        "if-none-match",
        "x-request-id",
    }
)
SHOWN_RESPONSE_HEADERS = ("content-type", "content-length", "location", "etag", "retry-after")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TEXTUAL_TYPES = re.compile(r"^(text/|application/(.+\+)?(json|xml|javascript|x-www-form-urlencoded))")
URL_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")

HeaderValue = Annotated[str, msgspec.Meta(max_length=MAX_HEADER_VALUE_CHARS, pattern=r"^[^\r\n\x00]*$")]


def parse_url(raw: str) -> URL:
    """A yarl URL the request will use as is (one parser for the check and the connect)."""
    if URL_FORBIDDEN_CHARS.search(raw):
        raise ValueError("url contains whitespace, control characters or backslashes")
    try:
        url = URL(raw)
    except ValueError as exc:
        raise ValueError(f"url is malformed: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("url must be http:// or https://")
    if not url.host:
        raise ValueError("url has no host")
    if url.user is not None or url.password is not None:
        raise ValueError("url must not carry credentials")
    return url


class HttpRequestArgs(ToolArgs, frozen=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL")]
    method: Method = "GET"
    headers: Annotated[
        dict[str, HeaderValue],
        msgspec.Meta(max_length=MAX_HEADERS, description=f"allowed: {', '.join(sorted(ALLOWED_HEADERS))}"),
    ] = msgspec.field(default_factory=dict)
    body: Annotated[str, msgspec.Meta(max_length=MAX_BODY_BYTES)] = ""

    def __post_init__(self) -> None:
        parse_url(self.url)
        refused = sorted(name for name in self.headers if name.lower() not in ALLOWED_HEADERS)
        if refused:
            raise ValueError(f"headers not allowed: {', '.join(refused)}")
        size = len(self.body.encode("utf-8", "surrogatepass"))
        if size > MAX_BODY_BYTES:
            raise ValueError(f"body is {size} bytes, the limit is {MAX_BODY_BYTES}")
        if self.body and self.method not in ("POST", "PUT", "PATCH"):
            raise ValueError(f"a {self.method} request carries no body")


def request_risk(args: HttpRequestArgs) -> Risk:
    return "low" if args.method == "GET" else "high"


def _normal_host(host: str) -> str:
    """Lowercase, no brackets or trailing dot; an IP literal in its one canonical spelling."""
    host = host.strip().strip("[]").rstrip(".").lower()
    ip = _literal_ip(host)
    return str(ip) if ip is not None else host


def allowed_hosts(settings: Settings) -> tuple[str, ...]:
    return tuple(h for h in (_normal_host(p) for p in settings.http_allow_hosts.split(",")) if h)


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    host = _normal_host(host)
    for entry in allowlist:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def check_host_allowed(url: URL, settings: Settings) -> None:
    host = url.host or ""
    if not host_allowed(host, allowed_hosts(settings)):
        raise ToolError(f"host {host!r} is not on the HTTP allowlist", reason="host_not_allowed", host=host)


def precheck(args: HttpRequestArgs, settings: Settings) -> None:
    check_host_allowed(parse_url(args.url), settings)


def address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not a public destination, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_kind(ip.ipv4_mapped)
    checks = (
        ("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast), ("private", ip.is_private), ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),
    )  # fmt: skip
    return next((kind for kind, hit in checks if hit), None)


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


async def resolve_destination(host: str, port: int, allow_private: bool) -> tuple[str, ...]:
    """Every address `host` resolves to, all of them checked; one refused address refuses the host."""
    host = _normal_host(host)
    if _literal_ip(host) is not None:
        found = [host]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise ToolError(
                f"cannot resolve host {host!r}: {exc}", reason="unresolvable", host=host
            ) from None
        found = [str(info[4][0]) for info in infos]
    addresses = tuple(dict.fromkeys(found))
    if not addresses:
        raise ToolError(f"host {host!r} has no address", reason="unresolvable", host=host)
    for address in addresses:
        ip = _literal_ip(address)
        kind = "unparseable" if ip is None else address_kind(ip)
        if kind is not None and not allow_private:
            raise ToolError(
                f"host {host!r} resolves to {address}, a {kind} address: refused",
                reason="private_address", host=host, address=address,
            )  # fmt: skip
    return addresses


class PinnedResolver(AbstractResolver):
    """Answers only for the checked host, with the addresses that were checked: no second DNS lookup."""

    def __init__(self, host: str, addresses: tuple[str, ...]) -> None:
        self._host = _normal_host(host)
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if _normal_host(host) != self._host:
            raise OSError(f"connection to unchecked host {host!r} refused")
        return [
            ResolveResult(
                hostname=host, host=address, port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST,
            )
            for address in self._addresses
        ]  # fmt: skip

    async def close(self) -> None:
        return None


class HttpResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    reason: str
    url: str
    headers: dict[str, str]
    body: bytes
    truncated: bool


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    buf = bytearray()
    while len(buf) <= cap:
        chunk = await response.content.read(cap + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf[:cap]), len(buf) > cap


def _redirect_target(url: URL, location: str) -> URL:
    try:
        return url.join(URL(location))
    except ValueError:
        refused = f"malformed redirect Location: {location[:200]!r}"
        raise ToolError(refused, reason="redirect_refused") from None


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, _normal_host(a.host or ""), a.port) == (b.scheme, _normal_host(b.host or ""), b.port)


async def send_pinned(
    method: Method, url: URL, addresses: tuple[str, ...], headers: dict[str, str], body: bytes | None
) -> HttpResponse:
    """Send a request whose connection can only go to `addresses`; follow same-origin GET redirects."""
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(url.host or "", addresses), use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(
        total=TOTAL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
    )
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            ) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location and method == "GET":
                    target = _redirect_target(url, location)
                    if not _same_origin(url, target):
                        raise ToolError(
                            f"redirect to another host refused: {target.host}", reason="redirect_refused"
                        )
                    url = target
                    continue
                content, truncated = await _read_capped(response, MAX_RESPONSE_BYTES)
                shown = {k: response.headers[k] for k in SHOWN_RESPONSE_HEADERS if k in response.headers}
                return HttpResponse(
                    status=response.status, reason=response.reason or "", url=str(url),
                    headers=shown, body=content, truncated=truncated,
                )  # fmt: skip
    raise ToolError(f"more than {MAX_REDIRECTS} redirects", reason="too_many_redirects")


def body_text(response: HttpResponse) -> str:
    content_type = response.headers.get("content-type", "").lower()
    if content_type and not TEXTUAL_TYPES.match(content_type):
        return f"[{len(response.body)} bytes of {content_type}, not shown]"
    charset = "utf-8"
    if match := re.search(r"charset=([\w-]+)", content_type):
        charset = match.group(1)
    try:
        return response.body.decode(charset, "replace")
    except LookupError:
        return response.body.decode("utf-8", "replace")


def render(method: str, response: HttpResponse, addresses: tuple[str, ...]) -> ToolOutput:
    text = body_text(response)
    note = f"\n[truncated at {MAX_RESPONSE_BYTES} bytes]" if response.truncated else ""
    head = f"HTTP {response.status} {response.reason} for {method} {response.url}"
    if "content-type" in response.headers:
        head += f"\ncontent-type: {response.headers['content-type']}"
    data = HttpResult(status=response.status, url=response.url, addresses=tuple(addresses),
                      headers=dict(response.headers), body=text, truncated=response.truncated)  # fmt: skip
    return ToolOutput(text=f"{head}\n{fence_data('http_request response body', text)}{note}", data=data)


async def http_request(args: HttpRequestArgs, ctx: ToolContext) -> ToolOutput:
    url = parse_url(args.url)
    check_host_allowed(url, ctx.settings)
    addresses = await resolve_destination(url.host or "", url.port or 0, ctx.settings.http_allow_private)
    headers = {**args.headers, "User-Agent": USER_AGENT}
    if ctx.idempotency_key:
        headers["Idempotency-Key"] = ctx.idempotency_key
    payload = args.body.encode() if args.body else None
    try:
        response = await send_pinned(args.method, url, addresses, headers, payload)
    except TimeoutError:
        raise ToolError(f"{args.method} {url.host} timed out", reason="timeout") from None
    except aiohttp.ClientError as exc:
        raise ToolError(f"{args.method} {url.host} failed: {exc}", reason="connection") from None
    return render(args.method, response, addresses)


HTTP_REQUEST_TOOL: Tool[HttpRequestArgs] = Tool(
    name="http_request",
    description=(
        "Call an allowlisted HTTP API. GET runs directly; POST, PUT, PATCH and DELETE wait for "
        "a reviewer's approval."
    ),
    args_type=HttpRequestArgs,
    run=http_request,
    risk=request_risk,
    precheck=precheck,
)
