"""A file at a remote http(s) URL (a /v1 client's `image_url`), fetched only through fetch_url's
SSRF-safe pieces: the URL checked and its address pinned (public addresses only, ports 80/443 unless
allow-listed, FETCH_URL_ALLOWED_HOSTS), each redirect checked again, no cookies, no proxy from the
environment, the body capped at FILE_MAX_BYTES as it arrives. Only when the fetch_url tool is on."""

from __future__ import annotations

from urllib.parse import unquote, urljoin, urlsplit

import anyio
import httpx2

from app.agent.tools.base import ToolError
from app.agent.tools.fetch_url import MAX_REDIRECTS, REDIRECTS, Resolver, _new_client, check_url, read_capped, resolve
from app.core.config import Settings
from app.files.errors import FileTooLarge, RemoteFileRefused


async def fetch_remote(url: str, settings: Settings, resolver: Resolver = resolve) -> tuple[bytes, str]:
    """The bytes at `url` and a file name from its path; RemoteFileRefused (why) or FileTooLarge."""
    allowed = [h.strip().lower() for h in settings.fetch_url_allowed_hosts.split(",") if h.strip()]
    cap = settings.file_max_bytes
    try:
        with anyio.fail_after(settings.fetch_url_timeout):
            async with _new_client(None, settings.fetch_url_timeout) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    target = await check_url(url, allowed_hosts=allowed, resolver=resolver)
                    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
                    headers = {"Host": target.host, "User-Agent": "agentchat-fetch/0.1", "Accept": "*/*"}
                    async with client.stream(
                        "GET", target.pinned_url(), headers=headers, extensions=extensions, follow_redirects=False
                    ) as response:
                        location = response.headers.get("location")
                        if response.status_code in REDIRECTS and location:
                            url = urljoin(url, location)
                            continue
                        if response.status_code >= 400:
                            raise RemoteFileRefused(f"The server answered {response.status_code}.")
                        body = await read_capped(response, cap + 1)
                    if len(body) > cap:
                        raise FileTooLarge(f"The file at the URL is larger than {cap} bytes (FILE_MAX_BYTES).")
                    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
                    return body, name
    except ToolError as exc:
        raise RemoteFileRefused(str(exc)) from exc
    except (httpx2.HTTPError, TimeoutError) as exc:
        raise RemoteFileRefused(f"Could not fetch the file: {type(exc).__name__}.") from exc
    raise RemoteFileRefused("Too many redirects.")
