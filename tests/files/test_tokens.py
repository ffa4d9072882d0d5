"""Attachments count in the history's token estimate (the budget that trims old turns, compaction's
sizes): by what the model reads — an image by its pixels, a PDF by its pages — not by the reference's
few characters."""

from __future__ import annotations

from typing import Any

from app.agent.history import build_history, estimate_tokens
from app.turns.compaction import estimate_content


def attachment(media_type: str, **meta: Any) -> dict[str, Any]:
    return {"type": "attachment", "file_id": "f", "filename": "x", "media_type": media_type, "sha256": "0" * 64} | meta


def test_images_and_pdfs_count_by_what_the_model_reads() -> None:
    text = [{"type": "text", "text": "look"}]
    image = [attachment("image/png", bytes=5000, width=1000, height=1000), *text]
    pdf = [attachment("application/pdf", bytes=5000, pages=10), *text]
    csv = [attachment("text/csv", bytes=40_000), *text]
    words = len(repr(text)) // 4  # the text beside them, as before
    assert estimate_tokens({"content": image}) == words + 1_000_000 // 750
    assert estimate_tokens({"content": pdf}) == words + 10 * 2000
    assert estimate_tokens({"content": csv}) == words + 40_000 // 4
    assert estimate_content(pdf) == estimate_tokens({"content": pdf})
    assert estimate_tokens({"content": text}) == estimate_content(text) == len(repr(text)) // 4


def test_an_old_turn_with_a_large_pdf_is_trimmed_first() -> None:
    rows: list[tuple[str, list[dict[str, Any]]]] = [
        ("user", [attachment("application/pdf", bytes=10**6, pages=50), {"type": "text", "text": "summarise"}]),
        ("assistant", [{"type": "text", "text": "done"}]),
        ("user", [{"type": "text", "text": "thanks"}]),
        ("assistant", [{"type": "text", "text": "welcome"}]),
    ]
    kept = build_history(rows, "and now?", budget=5000)
    assert [m["content"][0].get("text") for m in kept] == ["thanks", "welcome", "and now?"]
