"""Choose the provider the settings ask for."""

from __future__ import annotations

import httpx2

from app.core.config import Settings
from app.llm.base import ChatModel


def create_llm(settings: Settings, http: httpx2.AsyncClient) -> ChatModel:
    if settings.provider == "anthropic":
        from app.llm.anthropic import AnthropicModel

        return AnthropicModel(settings)
    if settings.provider == "openai":
        from app.llm.openai_compat import OpenAICompatModel

        return OpenAICompatModel(settings, http)
    from app.llm.offline import OfflineModel

    return OfflineModel()
