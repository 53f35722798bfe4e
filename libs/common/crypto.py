"""Personal data at rest: field encryption (AES-256-GCM) and blind indexes (HMAC-SHA256).

A :class:`FieldCipher` seals one value of one field of one row. Each value gets a fresh
random 96-bit nonce, and the associated data names the context (table), the row id and the
field, so a ciphertext copied onto another user or into another column does not open: it
fails loudly instead of showing someone else's phone number. The stored form names the key
that sealed it, so keys can rotate: ``enc1:<key id>:<base64(nonce || ciphertext+tag)>``.

A :class:`Keyring` holds the current key (every new value is sealed with it) and the old
keys still needed to read values sealed before a rotation. Key ids are derived from the keys
(8 hex characters of a SHA-256), so an operator configures keys only, never ids.

A :class:`BlindIndex` makes equality lookups possible without decrypting every row: an
HMAC-SHA256 (its own key, never the encryption key) over a normalised value (for phones:
E.164, so ``138 1234 1234`` and ``+86 138-1234-1234`` index alike), stored beside the
ciphertext in an indexed column. Lookups compute the HMAC under every configured index key,
so a rotation of the index key never makes a row unfindable while rows are re-indexed.

See docs/security.md ("Encryption at rest") for what is encrypted and how to rotate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable

import phonenumbers
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "enc1"
# 64 bits of HMAC: collisions between distinct values stay negligible for any realistic
# table (birthday bound ~4 billion values for a 50% chance of a single pair), the index stays
# small, and a lookup confirms each hit by decrypting it, so a collision costs a decryption,
# never a wrong answer. Truncating further would not hide more: phone numbers are few enough
# that anyone holding the index key could enumerate them whatever the width.
INDEX_HEX_CHARS = 16


class UndecryptableError(ValueError):
    """A stored value that does not open with the configured keys for this row and field:
    copied from another row or field, edited, or sealed with a key that is not configured."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


def decode_key(text: str, *, name: str = "key") -> bytes:
    """A 32-byte key given as base64 (``openssl rand -base64 32``) or as 64 hex characters."""
    cleaned = text.strip()
    try:
        key = (
            bytes.fromhex(cleaned)
            if len(cleaned) == 2 * KEY_BYTES
            else base64.b64decode(cleaned, validate=True)
        )
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"{name} is not base64 or hex of {KEY_BYTES} bytes") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{name} must be {KEY_BYTES} bytes (AES-256 / HMAC-SHA256), not {len(key)}"
        )
    return key


def decode_keys(text: str | None, *, name: str = "keys") -> list[bytes]:
    """A comma-separated list of keys (the old keys of a rotation); empty text = none."""
    return [decode_key(part, name=name) for part in (text or "").split(",") if part.strip()]


def derive_dev_key(secret: str, purpose: str) -> bytes:
    """A development key derived from a per-stack secret: the embedded stack works with no
    configuration. Never for production (anyone who knows the secret knows the key)."""
    return hashlib.sha256(f"tuike-dev-key:{purpose}:".encode() + secret.encode()).digest()


def key_id(key: bytes) -> str:
    """8 hex characters naming a key in stored values (not secret: a hash of a random key
    tells nothing about it)."""
    return hashlib.sha256(b"tuike-key-id:" + key).hexdigest()[:8]


class Keyring:
    """The current key (writes) and every configured key by id (reads)."""

    def __init__(self, current: bytes, old: Iterable[bytes] = ()) -> None:
        for key in (current, *old):
            if len(key) != KEY_BYTES:
                raise ValueError(f"keys are {KEY_BYTES} bytes")
        self.current = current
        self.current_id = key_id(current)
        self.keys = {key_id(key): key for key in old}
        self.keys[self.current_id] = current

    @classmethod
    def from_settings(cls, current: str, old: str | None = None, *, name: str) -> Keyring:
        return cls(decode_key(current, name=name), decode_keys(old, name=f"old {name}s"))

    @property
    def ids(self) -> list[str]:
        """Every key id, the current one first."""
        return [self.current_id, *(k for k in self.keys if k != self.current_id)]


class FieldCipher:
    """AES-256-GCM for the fields of one table (``context``), bound to row and field."""

    def __init__(self, keyring: Keyring, *, context: str) -> None:
        self.keyring = keyring
        self.context = context
        self._aeads = {kid: AESGCM(key) for kid, key in keyring.keys.items()}

    def _aad(self, row_id: int | str, field: str, kid: str) -> bytes:
        return f"{FORMAT}|{self.context}|{row_id}|{field}|{kid}".encode()

    def encrypt(self, value: str, *, row_id: int | str, field: str) -> str:
        kid = self.keyring.current_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[kid].encrypt(nonce, value.encode(), self._aad(row_id, field, kid))
        return f"{FORMAT}:{kid}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, *, row_id: int | str, field: str) -> str:
        """The plaintext, or :class:`UndecryptableError` (never a wrong value)."""
        kid = self.key_id_of(stored)
        if kid is None:
            raise UndecryptableError(f"{field} is not in the {FORMAT} format")
        aead = self._aeads.get(kid)
        if aead is None:
            raise UndecryptableError(
                f"{field} was sealed with key {kid}, which is not configured "
                "(add it to the old keys)",
                key_id=kid,
            )
        try:
            raw = base64.b64decode(stored.split(":", 2)[2], validate=True)
            plain = aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(row_id, field, kid)
            )
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise UndecryptableError(
                f"{field} does not decrypt for this row: copied from another row or field, "
                "or edited",
                key_id=kid,
            ) from exc
        return plain.decode()

    @staticmethod
    def key_id_of(stored: str) -> str | None:
        """The id of the key that sealed ``stored``; None if it is not a sealed value."""
        version, _, rest = stored.partition(":")
        kid, _, body = rest.partition(":")
        if version != FORMAT or len(kid) != 8 or not body:
            return None
        return kid

    def is_current(self, stored: str) -> bool:
        return self.key_id_of(stored) == self.keyring.current_id


class BlindIndex:
    """Keyed HMAC over a normalised value, for equality lookups on encrypted data.

    Stored form: ``<index key id>:<16 hex of HMAC-SHA256>``. The key id lets a background
    pass find rows indexed under a retired key."""

    def __init__(self, keyring: Keyring, *, context: str) -> None:
        self.keyring = keyring
        self.context = context

    def _digest(self, kid: str, normalised: str) -> str:
        mac = hmac.new(
            self.keyring.keys[kid], f"{self.context}|{normalised}".encode(), hashlib.sha256
        )
        return f"{kid}:{mac.hexdigest()[:INDEX_HEX_CHARS]}"

    def compute(self, normalised: str) -> str:
        """The index value under the current key (what a write stores)."""
        return self._digest(self.keyring.current_id, normalised)

    def candidates(self, normalised: str) -> list[str]:
        """The value under every configured key (what a lookup searches for)."""
        return [self._digest(kid, normalised) for kid in self.keyring.ids]

    def is_current(self, stored: str) -> bool:
        return stored.startswith(f"{self.keyring.current_id}:")


_PHONE_TEXT = re.compile(r"^\+?[0-9\-\s().]{3,40}$")


def normalize_phone(text: str, default_region: str = "CN") -> str:
    """A phone number in E.164 (``+8613812341234``), whatever the spacing, dashes or
    international prefix (``+86``, ``0086``, ``86``): the form a blind index is computed
    over. A number without a country code is read in ``default_region``. ValueError for text
    that is not a phone number."""
    cleaned = text.strip()
    if not _PHONE_TEXT.match(cleaned) or sum(c.isdigit() for c in cleaned) < 3:
        raise ValueError("not a phone number")
    try:
        number = phonenumbers.parse(cleaned, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc}") from exc
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
