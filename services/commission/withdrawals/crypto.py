"""Payee fields encrypted at rest with AES-256-GCM.

Each value gets a fresh 96-bit nonce; the associated data binds a ciphertext to its promoter
and field, so a value copied into another row or column fails to decrypt instead of showing
someone else's card. Stored form: ``v1:<base64(nonce || ciphertext+tag)>``.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1"


class PayeeCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the payee encryption key is 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    @classmethod
    def from_setting(cls, encoded_key: str) -> PayeeCipher:
        """A key given as base64 (``openssl rand -base64 32``) or 64 hex characters."""
        text = encoded_key.strip()
        try:
            key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise ValueError("the payee encryption key is base64 or hex of 32 bytes") from exc
        return cls(key)

    @classmethod
    def derived(cls, secret: str) -> PayeeCipher:
        """A development key derived from a per-stack secret (never for production)."""
        return cls(hashlib.sha256(b"tuike-payee-encryption-dev:" + secret.encode()).digest())

    def encrypt(self, value: str, *, promoter_id: int, field: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), _aad(promoter_id, field))
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, *, promoter_id: int, field: str) -> str:
        version, _, body = stored.partition(":")
        if version != _VERSION:
            raise ValueError(f"unknown payee ciphertext version {version!r}")
        raw = base64.b64decode(body)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], _aad(promoter_id, field)).decode()
        except InvalidTag as exc:
            raise ValueError("payee field does not decrypt with this key and row") from exc


def _aad(promoter_id: int, field: str) -> bytes:
    return f"tuike:payee:{promoter_id}:{field}".encode()
