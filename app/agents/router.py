"""GET /agents: the agents this key may use, as clients pick them (`agent` on /chat, `model` on /v1)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from app.agents.catalog import AgentCatalog
from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.state import ResourcesDep

router = APIRouter(tags=["agents"], responses=KEY_RESPONSES)


class AgentOut(BaseModel):
    name: str
    description: str
    provider: str
    model: str
    default: bool
    tools: list[str]  # as offered to the model now (MCP tools of servers connected now included)


class AgentList(BaseModel):
    items: list[AgentOut]


async def get_agents(resources: ResourcesDep) -> AgentCatalog:
    return resources.agents


AgentsDep = Annotated[AgentCatalog, Depends(get_agents)]


@router.get("/agents")
async def list_agents(principal: CurrentPrincipal, agents: AgentsDep) -> AgentList:
    """The agents this key may use (its own restriction, or all), the default first-class among them."""
    return AgentList(
        items=[
            AgentOut(
                name=agent.name,
                description=agent.config.description,
                provider=agent.provider,
                model=agent.model,
                default=agent is agents.default,
                tools=agent.tools.names,
            )
            for agent in agents.usable(principal.agents)
        ]
    )
