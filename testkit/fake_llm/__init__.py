"""A fake LLM provider for tests: Anthropic Messages API and OpenAI chat completions.

The fake speaks the wire protocols closely enough that the official ``anthropic``
SDK (JSON and SSE) and plain OpenAI-compatible clients work against it unchanged.
Behaviour is scripted by directives written in the last user message, e.g.
``"hi [[slow:0.1]] [[words:50]]"``; see ``parse_directives`` for the full list.

It also validates conversation histories the way the real API does, so a test
can assert that the service under test never sent an invalid one
(``server.state.rejections == []``).

Usage::

    with FakeLLMServer() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test")
        ...
        assert fake.state.rejections == []

Standalone (for subprocess end-to-end tests and benchmarks)::

    python -m testkit.fake_llm --port 8765

Modules: ``directives`` (the ``[[...]]`` language), ``validation`` (what the real APIs reject),
``answers`` (what the model says), ``anthropic_wire`` and ``openai_wire`` (the two wire formats),
``responses`` (ASGI response plumbing, SSE framing), ``state`` (counters and recordings),
``app`` (the Starlette app), ``server`` (``FakeLLMServer``, the threaded uvicorn runner).
"""

from testkit.fake_llm.app import create_app
from testkit.fake_llm.directives import DirectiveError, Directives, ToolDirective, parse_directives
from testkit.fake_llm.server import FakeLLMServer
from testkit.fake_llm.state import MAX_RECORDED_REQUESTS, FakeLLMState
from testkit.fake_llm.validation import InvalidRequest, validate_anthropic, validate_openai

__all__ = [
    "MAX_RECORDED_REQUESTS",
    "DirectiveError",
    "Directives",
    "FakeLLMServer",
    "FakeLLMState",
    "InvalidRequest",
    "ToolDirective",
    "create_app",
    "parse_directives",
    "validate_anthropic",
    "validate_openai",
]
