"""Long-term memory per owner: facts remembered in one conversation can be recalled in any other."""

from __future__ import annotations

import functools
import operator
import re

from pydantic import BaseModel, Field
from sqlalchemy import case, func, or_, select

from app.agent.tools.base import Tool, ToolContext, ToolError
from app.models import Memory

MAX_RESULTS = 10


class RememberInput(BaseModel):
    fact: str = Field(min_length=1, max_length=2000, description="A short, self-contained fact worth keeping.")


class RecallInput(BaseModel):
    query: str = Field(min_length=1, max_length=500, description="Words to search the remembered facts for.")


async def remember(data: RememberInput, ctx: ToolContext) -> str:
    async with ctx.transaction() as session:
        session.add(Memory(owner_id=ctx.owner_id, content=data.fact.strip()))
    return "Remembered."


async def recall(data: RecallInput, ctx: ToolContext) -> str:
    words = [w for w in re.findall(r"\w+", data.query.lower()) if len(w) > 1][:10]
    if not words:
        raise ToolError("The query has no searchable words.")
    lowered = func.lower(Memory.content)
    # Rank by how many query words a fact contains; portable across Postgres and SQLite.
    hits = [case((lowered.contains(w, autoescape=True), 1), else_=0) for w in words]
    score = functools.reduce(operator.add, hits)
    stmt = (
        select(Memory.content)
        .where(Memory.owner_id == ctx.owner_id, or_(*(lowered.contains(w, autoescape=True) for w in words)))
        .order_by(score.desc(), Memory.id.desc())
        .limit(MAX_RESULTS)
    )
    async with ctx.transaction() as session:
        facts = (await session.execute(stmt)).scalars().all()
    if not facts:
        return "Nothing remembered matches that."
    return "\n".join(f"- {fact}" for fact in facts)


remember_tool = Tool(
    name="remember",
    description="Store a fact about the user or their work to recall in later conversations.",
    input_model=RememberInput,
    run=remember,
)
recall_tool = Tool(
    name="recall",
    description="Search facts remembered in earlier conversations.",
    input_model=RecallInput,
    run=recall,
)
