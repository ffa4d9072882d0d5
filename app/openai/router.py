"""/v1: the OpenAI-compatible routes, every error in OpenAI's shape (see errors.py)."""

from __future__ import annotations

from fastapi import APIRouter

from app.core.errors import NotFound
from app.openai import chat, conversations, responses
from app.openai.errors import OpenAIRoute, declared

# Every route here takes a key: its 401 and 429 (and the 400 and 503 every /v1 route can answer)
# are declared once, in OpenAI's shape; routes add their own.
router = APIRouter(prefix="/v1", route_class=OpenAIRoute, responses=declared(401, 429))
router.include_router(chat.router)
router.include_router(responses.router)
router.include_router(conversations.router)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def unknown(path: str) -> None:
    """Anything else under /v1 is a 404 in OpenAI's shape, not the service's envelope."""
    raise NotFound(f"Unknown endpoint: /v1/{path}.")
