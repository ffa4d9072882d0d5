"""`python -m app.cli` — manage API keys."""
