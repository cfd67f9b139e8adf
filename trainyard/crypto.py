"""Secrets at rest and in transit to the node: Fernet (AES-128-CBC + HMAC) under TRAINYARD_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["InvalidToken", "decrypt_secrets", "encrypt_secrets", "new_secret_key"]


def new_secret_key() -> str:
    return secrets.token_urlsafe(32)


def _fernet(key: str) -> Fernet:
    # Any string works as a key: it is stretched to Fernet's 32 bytes with SHA-256.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


def encrypt_secrets(values: dict[str, str], key: str) -> str:
    return _fernet(key).encrypt(json.dumps(values).encode()).decode()


def decrypt_secrets(token: str, key: str) -> dict[str, str]:
    values: dict[str, str] = json.loads(_fernet(key).decrypt(token.encode()))
    return values
