"""fetch_url refuses every non-public address: literal, resolved, and behind redirects.

No test reaches beyond this machine: addresses that would be public are answered by an
httpx MockTransport, and names are resolved by a test resolver.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from app.agent.tools.base import ToolContext, ToolError
from app.agent.tools.fetch_url import FetchURLInput, check_url, make_fetch_url, resolve
from app.core.config import Settings

PUBLIC = "93.184.216.34"
DNS = {
    "public.test": [PUBLIC],
    "other.test": ["93.184.216.35"],
    "internal.test": ["10.1.2.3"],
    "mixed.test": [PUBLIC, "127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host in DNS:
        return DNS[host]
    return await resolve(host, port)  # real resolution for names like localhost


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://localhost:8000/admin",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://internal.test/",
        "http://metadata.test/",
        "http://mixed.test/",
        "ftp://public.test/",
        "file:///etc/passwd",
        "http://user:pw@public.test/",
        "http:///nohost",
    ],
)
async def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(ToolError):
        await check_url(url, allowed_hosts=[], resolver=fake_resolver)


async def test_public_target_is_pinned_to_the_checked_address() -> None:
    target = await check_url("https://public.test:8443/a?b=1", allowed_hosts=[], resolver=fake_resolver)
    assert target.pinned_url() == f"https://{PUBLIC}:8443/a?b=1"
    assert target.host == "public.test"


async def test_allow_list() -> None:
    await check_url(
        "http://docs.public.test/", allowed_hosts=["public.test"], resolver=lambda h, p: fake_resolver("public.test", p)
    )
    with pytest.raises(ToolError, match="allow-list"):
        await check_url("http://other.test/", allowed_hosts=["public.test"], resolver=fake_resolver)


def make_context(settings: Settings, handler: httpx.MockTransport) -> ToolContext:
    return ToolContext(
        owner_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        settings=settings,
        sessions=None,  # type: ignore[arg-type]
        http=httpx.AsyncClient(transport=handler),
    )


async def run_fetch(settings: Settings, url: str, handler: httpx.MockTransport) -> str:
    ctx = make_context(settings, handler)
    async with ctx.http:
        return await make_fetch_url(fake_resolver).run(FetchURLInput(url=url), ctx)


async def test_fetches_readable_text_from_the_pinned_address(settings: Settings) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        html = (
            "<html><head><title>t</title><script>alert(1)</script></head>"
            "<body><h1>Hello</h1><p>World &amp; co</p></body></html>"
        )
        return httpx.Response(200, text=html, headers={"content-type": "text/html; charset=utf-8"})

    text = await run_fetch(settings, "http://public.test/page", httpx.MockTransport(handler))
    assert text == "Hello\nWorld & co"
    assert str(seen[0].url) == f"http://{PUBLIC}/page"
    assert seen[0].headers["host"] == "public.test"


async def test_a_redirect_to_a_private_address_is_refused(settings: Settings) -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    with pytest.raises(ToolError, match="non-public"):
        await run_fetch(settings, "http://public.test/", httpx.MockTransport(handler))
    assert requested == [f"http://{PUBLIC}/"]  # the internal address was never requested


async def test_redirects_between_public_hosts_are_followed_and_bounded(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "public.test":
            return httpx.Response(301, headers={"location": "http://other.test/final"})
        return httpx.Response(200, text="done", headers={"content-type": "text/plain"})

    assert await run_fetch(settings, "http://public.test/", httpx.MockTransport(handler)) == "done"

    def loop(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "/again"})

    with pytest.raises(ToolError, match="Too many redirects"):
        await run_fetch(settings, "http://public.test/", httpx.MockTransport(loop))


async def test_size_is_capped(settings: Settings) -> None:
    small = settings.model_copy(update={"fetch_url_max_bytes": 2048})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"a" * 100_000, headers={"content-type": "text/plain"})

    assert len(await run_fetch(small, "http://public.test/", httpx.MockTransport(handler))) == 2048


async def test_loopback_is_refused_through_the_agent(settings: Settings, llm_server: object) -> None:
    """End to end: the model asks for the fake LLM server itself (on loopback); the tool refuses."""
    import json

    from app.main import create_app
    from tests.conftest import make_key
    from tests.helpers import live_server

    enabled = settings.model_copy(update={"agent_tools": "fetch_url"})
    async with live_server(create_app(enabled)) as live:
        key = await make_key(live.state)
        target = f"{live.url}/healthz"
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            r = await http.post(
                "/chat",
                headers={"Authorization": f"Bearer {key}"},
                json={"message": f"[[tool:fetch_url {json.dumps({'url': target})}]]"},
            )
    (call,) = r.json()["message"]["tool_calls"]
    assert call["is_error"] is True
    assert "non-public" in call["result"]
