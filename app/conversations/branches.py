"""Branches: a conversation is a tree of messages, each below the one it follows (`parent_id`).

A regenerated answer is a sibling of the answer it replaces (same user message); an edited message
is a sibling of the message it replaces (same parent, the answer before it; `ROOT` for a first
message). A *branch* is the path from the first message down to a leaf; the model only ever sees
the branch a turn continues, and the history API shows one branch at a time: the latest leaf's
unless asked for another.

A compaction row (role `summary`, app/turns/compaction.py) hangs below the message it acts on last:
it belongs to every branch through that message, and to no other.

A message whose `parent_id` is NULL was written before branches existed (or, during a rolling
deploy, by a replica still running that code): it follows the message before it, by id, compaction
rows aside — as every conversation was then one branch. A new first message of its own (an edit of
a conversation's first) is written below `ROOT`, so NULL needs no backfill and old rows stay as they
are (`parents`).

Ids are UUIDv7: a message sorts after its ancestors, so "latest" is "largest id", and a branch in
id order is the path in conversation order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from app.llm.summary import SUMMARY_ROLE

# A new first message (LibreChat's convention for "no parent"): `parent_message_id` of an edit of
# a conversation's first message, which then starts a branch of its own.
ROOT = uuid.UUID(int=0)


class Node(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def parent_id(self) -> uuid.UUID | None: ...
    @property
    def role(self) -> str: ...


N = TypeVar("N", bound=Node)


def parents(rows: Iterable[Node]) -> dict[uuid.UUID, uuid.UUID | None]:
    """Each row's parent as the branches read it (None: a first message): a NULL parent is the row
    before it by id (compaction rows aside), ROOT none."""
    found: dict[uuid.UUID, uuid.UUID | None] = {}
    previous: uuid.UUID | None = None
    for row in sorted(rows, key=lambda r: r.id):
        parent = row.parent_id if row.parent_id is not None else previous
        found[row.id] = None if parent == ROOT else parent
        if row.role != SUMMARY_ROLE:
            previous = row.id
    return found


def latest_leaf(rows: Iterable[Node]) -> uuid.UUID | None:
    """The most recent message (compaction rows aside): nothing can be below it, so it is a leaf."""
    return max((row.id for row in rows if row.role != SUMMARY_ROLE), default=None)


def leaf_below(rows: Sequence[Node], message_id: uuid.UUID) -> uuid.UUID:
    """The latest leaf of the branches through `message_id` (itself, when nothing follows it)."""
    below = {message_id}
    leaf = message_id
    parent = parents(rows)
    for row in sorted(rows, key=lambda r: r.id):  # parents before children
        if row.role != SUMMARY_ROLE and parent[row.id] in below:
            below.add(row.id)
            leaf = max(leaf, row.id)
    return leaf


def branch(rows: Sequence[N], leaf: uuid.UUID | None) -> list[N]:
    """The branch from the first message down to `leaf` (None: empty), with the compaction rows
    hanging below its messages, in id order (conversation order)."""
    if leaf is None:
        return []
    parent = parents(rows)
    on_path: set[uuid.UUID] = set()
    at: uuid.UUID | None = leaf
    while at is not None and at in parent and at not in on_path:  # a cycle cannot be written; still, stop
        on_path.add(at)
        at = parent[at]
    return sorted(
        (row for row in rows if row.id in on_path or (row.role == SUMMARY_ROLE and parent[row.id] in on_path)),
        key=lambda row: row.id,
    )


def siblings(rows: Sequence[Node]) -> dict[uuid.UUID | None, list[uuid.UUID]]:
    """Messages grouped by the message they follow (compaction rows aside), each group in id order."""
    groups: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    parent = parents(rows)
    for row in sorted(rows, key=lambda r: r.id):
        if row.role != SUMMARY_ROLE:
            groups.setdefault(parent[row.id], []).append(row.id)
    return groups
