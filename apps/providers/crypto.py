"""Encryption at rest for provider and channel secrets (Fernet: AES-128-CBC + HMAC), with key rotation.

``COSTCONTROL_ENCRYPTION_KEYS`` is a list of Fernet keys, newest first: new secrets are encrypted
with the first, and a secret encrypted with any of them still decrypts (MultiFernet). To rotate:
put a new key first, keep the old ones after it, run ``manage.py reencrypt_secrets`` (every stored
secret is re-encrypted with the first key), then drop the old keys. Development without keys derives
one from SECRET_KEY; production requires the list (production.py).
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["InvalidToken", "decrypt", "encrypt", "reencrypt", "EncryptedSecret"]


@cache
def _multi_fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        keys = (base64.urlsafe_b64encode(hashlib.sha256(secret_key.encode()).digest()).decode(),)
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except ValueError:
            raise ImproperlyConfigured(
                f"COSTCONTROL_ENCRYPTION_KEYS: key {position} is not a Fernet key (32 url-safe base64-encoded "
                "bytes; make one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from None
    return MultiFernet(fernets)


def _fernet() -> MultiFernet:
    return _multi_fernet(tuple(settings.FIELD_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """The plaintext; ``InvalidToken`` when no configured key can decrypt it."""
    return _fernet().decrypt(token.encode()).decode()


def reencrypt(token: str) -> str:
    """``token`` encrypted again with the first key (``InvalidToken`` when no key decrypts it)."""
    return _fernet().rotate(token.encode()).decode()


class EncryptedSecret:
    """For models with a ``secret_encrypted`` text field: ``secret`` reads and writes it in plaintext."""

    secret_encrypted: str

    @property
    def secret(self) -> str:
        return decrypt(self.secret_encrypted) if self.secret_encrypted else ""

    @secret.setter
    def secret(self, value: str) -> None:
        self.secret_encrypted = encrypt(value) if value else ""

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted)
