"""``python -m testkit.fake_llm --port N``: the fake as a standalone server (subprocess tests, benchmarks)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from testkit.fake_llm.app import create_app
from testkit.fake_llm.server import _uvicorn_config, _UvicornServer
from testkit.fake_llm.state import FakeLLMState


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.fake_llm", description="Fake Anthropic/OpenAI LLM server for tests."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--require-openai-key", action="store_true")
    args = parser.parse_args(argv)
    state = FakeLLMState(require_openai_key=args.require_openai_key)
    server = _UvicornServer(_uvicorn_config(create_app(state), args.host, args.port), state)
    print(f"fake LLM server on http://{args.host}:{args.port}", flush=True)  # noqa: T201 (the CLI's one line)
    server.run()


if __name__ == "__main__":
    main()
