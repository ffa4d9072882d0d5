"""The run manager, as a dependency of the routes that follow and cancel runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.runs.followers import Followers
from app.runs.manager import RunManager
from app.state import ResourcesDep


async def get_runs(resources: ResourcesDep) -> RunManager:
    return resources.runs


RunsDep = Annotated[RunManager, Depends(get_runs)]


async def get_followers(resources: ResourcesDep) -> Followers:
    return resources.followers


FollowersDep = Annotated[Followers, Depends(get_followers)]
