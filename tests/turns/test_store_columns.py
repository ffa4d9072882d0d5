"""The turn's written-out SQL names columns the models define: a rename in a model fails here, not in
production. Runs without Postgres."""

from __future__ import annotations

from dataclasses import fields

from app.models import Conversation, Message
from app.turns import store
from app.turns.store import CONVERSATION_COLUMNS, MESSAGE_COLUMNS, OUTCOME_COLUMNS, Outcome


def test_the_statements_name_only_columns_of_the_models() -> None:
    assert set(MESSAGE_COLUMNS) <= set(Message.__table__.columns.keys())
    assert set(CONVERSATION_COLUMNS) <= set(Conversation.__table__.columns.keys())
    assert set(OUTCOME_COLUMNS) <= set(Message.__table__.columns.keys())


def test_phase_3_sets_each_field_of_its_record_once() -> None:
    assert OUTCOME_COLUMNS == tuple(f.name for f in fields(Outcome))
    for name in OUTCOME_COLUMNS:
        assert store._RECORD.count(f" {name} = $") == 1, name
    # Every parameter slot the statement names is filled: the record, then updated_at, id, conversation.
    assert f"${len(OUTCOME_COLUMNS) + 3}" in store._RECORD
    assert f"${len(OUTCOME_COLUMNS) + 4}" not in store._RECORD


def test_phase_1_inserts_every_required_message_column() -> None:
    required = {
        column.name
        for column in Message.__table__.columns
        if not column.nullable and column.default is None and column.server_default is None
    }
    assert required <= set(MESSAGE_COLUMNS)
    variants = [store._open_existing(mode, history, dequeue)[0] for mode in ("latest", "parent", "regenerate")
                for history in (True, False) for dequeue in (True, False)]  # fmt: skip
    for statement in [store._OPEN_NEW_PLAIN, store._OPEN_NEW_EARLIER, *variants]:
        for column in MESSAGE_COLUMNS:
            assert column in statement
        # Every named parameter was numbered.
        assert "{" not in statement
