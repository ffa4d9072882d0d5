"""A client's sampling parameters as each provider takes them: its own names and ranges, the rest left out."""

from __future__ import annotations

from app.llm import anthropic, openai_compat
from app.llm.base import LLMRequest, Sampling

EVERYTHING = Sampling(
    temperature=1.5, top_p=0.9, stop=("END", "  ", "B", "C", "D"), frequency_penalty=3.0, presence_penalty=-0.5, seed=7
)


def test_the_openai_compatible_provider_sends_every_one_within_openais_ranges() -> None:
    request = LLMRequest(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}], sampling=EVERYTHING)
    payload = openai_compat.build_payload(request)
    assert {k: payload[k] for k in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")} == {
        "temperature": 1.5,
        "top_p": 0.9,
        "frequency_penalty": 2.0,  # clamped to OpenAI's -2..2
        "presence_penalty": -0.5,
        "seed": 7,
    }
    assert payload["stop"] == ["END", "  ", "B", "C"]  # at most 4
    bare = openai_compat.build_payload(LLMRequest(model="m", max_tokens=10, messages=[]))
    assert not {"temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty"} & set(bare)


def test_anthropic_gets_temperature_or_top_p_and_its_stop_sequences() -> None:
    assert anthropic.sampling_params(EVERYTHING) == {"temperature": 1.0, "stop_sequences": ["END", "B", "C", "D"]}
    assert anthropic.sampling_params(Sampling(top_p=1.2, stop=(" ",))) == {"top_p": 1.0}
    assert anthropic.sampling_params(Sampling(temperature=-1)) == {"temperature": 0.0}
    assert anthropic.sampling_params(Sampling(frequency_penalty=1, presence_penalty=1, seed=3)) == {}
