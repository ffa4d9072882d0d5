"""API key material: generation and hashing.

Keys carry 256 bits of randomness, so a single SHA-256 is the right hash: slow hashes defend
guessable passwords, and would cost milliseconds on every request for nothing here.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "ak_"


def generate_key() -> tuple[str, str]:
    """Return (full key, display prefix). The full key is shown once and never stored."""
    public = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    return key, f"{KEY_PREFIX}{public}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
