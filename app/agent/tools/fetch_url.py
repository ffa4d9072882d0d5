"""GET a public web page and return its readable text, refusing every non-public address.

The check runs after DNS resolution and again on every redirect, and the request then goes to
the very address that was checked (Host header and TLS name kept), so a DNS answer that changes
between check and connect (rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import httpx
from pydantic import BaseModel, Field

from app.agent.tools.base import Tool, ToolContext, ToolError

MAX_REDIRECTS = 5
Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


async def resolve(host: str, port: int) -> list[str]:
    """All addresses a name resolves to, without blocking the event loop."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # is_global is False for private, loopback, link-local (cloud metadata), shared and reserved
    # ranges; multicast is checked on its own because some multicast ranges count as global.
    return address.is_global and not address.is_multicast


class Target:
    def __init__(self, url: str, address: str) -> None:
        self.url, self.address = url, address
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.scheme = parts.scheme

    def pinned_url(self) -> str:
        """The URL with the checked address in place of the name."""
        parts = urlsplit(self.url)
        ip = ipaddress.ip_address(self.address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


async def check_url(url: str, *, allowed_hosts: list[str], resolver: Resolver) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise ToolError("Only http and https URLs can be fetched.")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ToolError("The URL has no host.")
    if parts.username or parts.password:
        raise ToolError("URLs with credentials are not fetched.")
    if allowed_hosts and not any(host == h or host.endswith("." + h) for h in allowed_hosts):
        raise ToolError(f"The host {host} is not on the allow-list.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ToolError("The URL has an invalid port.") from exc
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await resolver(host, port)]
        except OSError as exc:
            raise ToolError(f"Could not resolve {host}.") from exc
    if not addresses:
        raise ToolError(f"Could not resolve {host}.")
    refused = [str(a) for a in addresses if not is_public(a)]
    if refused:
        # One internal answer is enough to refuse: the client could connect to any of them.
        raise ToolError(f"Refused: {host} resolves to a non-public address.")
    return Target(url, str(addresses[0]))


class _TextExtractor(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def readable_text(body: str, content_type: str) -> str:
    if "html" not in content_type:
        return body.strip()
    parser = _TextExtractor()
    parser.feed(body)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class FetchURLInput(BaseModel):
    url: str = Field(max_length=2000, description="An http(s) URL of a public web page.")


def make_fetch_url(resolver: Resolver = resolve) -> Tool[FetchURLInput]:
    async def fetch_url(data: FetchURLInput, ctx: ToolContext) -> str:
        settings = ctx.settings
        allowed = [h.strip().lower() for h in settings.fetch_url_allowed_hosts.split(",") if h.strip()]
        url = data.url
        with anyio.fail_after(settings.fetch_url_timeout):
            for _ in range(MAX_REDIRECTS + 1):
                target = await check_url(url, allowed_hosts=allowed, resolver=resolver)
                status, location, content_type, raw = await _get(ctx.http, target, settings.fetch_url_max_bytes)
                if status in {301, 302, 303, 307, 308} and location:
                    url = urljoin(url, location)
                    continue
                if status >= 400:
                    raise ToolError(f"The server answered {status}.")
                text = raw.decode("utf-8", errors="replace")
                # Parsing a large page is CPU work: do it off the event loop.
                return await anyio.to_thread.run_sync(readable_text, text, content_type)
        raise ToolError("Too many redirects.")

    return Tool(
        name="fetch_url",
        description="Fetch a public web page (http or https) and return its readable text.",
        input_model=FetchURLInput,
        run=fetch_url,
    )


async def _get(http: httpx.AsyncClient, target: Target, max_bytes: int) -> tuple[int, str | None, str, bytes]:
    headers = {
        "Host": target.host,
        "Accept": "text/html, text/plain;q=0.9, */*;q=0.1",
        "User-Agent": "agentchat-fetch/0.1",
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    chunks: list[bytes] = []
    try:
        async with http.stream(
            "GET", target.pinned_url(), headers=headers, extensions=extensions, follow_redirects=False
        ) as response:
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    chunks.append(chunk[: max_bytes - (size - len(chunk))])
                    break  # keep what fits; the page was larger than the cap
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ToolError(f"Could not fetch the page: {type(exc).__name__}.") from exc
    content_type = response.headers.get("content-type", "")
    return response.status_code, response.headers.get("location"), content_type, b"".join(chunks)
