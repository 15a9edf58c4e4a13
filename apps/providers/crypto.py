"""Encryption at rest for provider secrets (Fernet: AES-128-CBC + HMAC)."""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet
from django.conf import settings


@cache
def _fernet() -> Fernet:
    key = settings.FIELD_ENCRYPTION_KEY
    if not key:
        # Development only: production.py requires COSTCONTROL_ENCRYPTION_KEY.
        key = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()
    return Fernet(key)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


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
