"""What every model call of a turn passes first: the key still active, its token quota."""

from __future__ import annotations

import time
import uuid

import structlog

from app.agent.history import estimate_tokens
from app.auth.errors import TokenQuotaExceeded
from app.auth.repository import is_active
from app.core.degraded import degraded
from app.core.errors import Unauthorized
from app.llm.base import LLMRequest, Usage
from app.state import Resources

log = structlog.get_logger(__name__)


class KeyGate:
    """Before each model call of a turn: is the key still active, and has it quota left? And during
    a call, every AUTH_CACHE_SECONDS: is the key still active?

    A key revoked while its turns run (streams, `on_disconnect: continue` runs) stops them within
    AUTH_CACHE_SECONDS on every replica, mid-call too (at the call's next event; the partial answer
    is recorded): each looks at the database at most once per AUTH_CACHE_SECONDS.
    """

    def __init__(self, resources: Resources, owner_id: uuid.UUID) -> None:
        self.limits, self.keys, self.db, self.owner_id = resources.limits, resources.keys, resources.db, owner_id
        self._every = self.keys.ttl if self.keys.ttl > 0 else 1.0
        self._next_check = 0.0  # monotonic

    def due(self) -> bool:
        """Cheap, for every event of a call: time to look at the key again?"""
        return time.monotonic() >= self._next_check

    async def check(self) -> None:
        """Unauthorized if the key was revoked: the cache's word while it vouches, else one read."""
        if not self.keys.known_active(self.owner_id):
            async with self.db.statement() as conn:
                active = await is_active(conn, self.owner_id)
            if not active:
                log.warning("chat.turn.key_revoked")
                raise Unauthorized("The API key was revoked while the turn ran.")
            self.keys.vouch(self.owner_id)
        self._next_check = time.monotonic() + self._every

    async def reserve(self, request: LLMRequest) -> int:
        await self.check()
        if not self.limits.tokens_per_day:
            return 0
        worst = request.max_tokens + sum(estimate_tokens(m) for m in request.messages) + len(request.system or "") // 4
        decision = await degraded(self.limits.reserve_tokens(self.owner_id, worst), None, "token_quota")
        if decision is None:
            return 0
        if not decision.allowed:
            log.info("limits.refused", limit="tokens_per_day", between_steps=True)
            raise TokenQuotaExceeded(headers=decision.headers())
        return worst

    @property
    def settles(self) -> bool:
        """Whether `settle` has anything to do (a token quota is on): without one, a call's end
        enters no shielded scope for it."""
        return bool(self.limits.tokens_per_day)

    async def settle(self, reserved: int, usage: Usage) -> None:
        if self.settles:
            used = usage.input_tokens + usage.output_tokens
            await degraded(self.limits.settle_tokens(self.owner_id, reserved, used), None, "token_quota")
