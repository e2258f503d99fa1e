"""Tenant secrets at rest: Fernet-encrypted (AES-128-CBC with an HMAC-SHA256 tag) under FT_SECRETS_KEY.

FT_SECRETS_KEY holds one or more Fernet keys, comma-separated: the first encrypts, each of them decrypts
(cryptography's MultiFernet), so a key is rotated by putting the new one first, re-encrypting every row with
`ftctl secrets reencrypt`, then dropping the old one. Unset, a key file is made once as FT_DATA_DIR/secrets.key
(mode 0600): a single machine works out of the box, and a startup warning says the key must be shared and kept.

A stored value is `fernet:<token>`; a value without that prefix is a row written in clear before encryption
came, read as it is and encrypted when it is next written (or by `ftctl secrets reencrypt`).
"""

import logging
import os
import secrets as _random
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.core.config import settings

log = logging.getLogger(__name__)
PREFIX = "fernet:"
KEY_FILE = "secrets.key"


class SecretUnreadable(RuntimeError):
    """A stored secret none of the keys decrypts: the key that encrypted it was removed from FT_SECRETS_KEY."""


def key_file() -> Path:
    return settings.data_dir.resolve() / KEY_FILE


def _configured_keys() -> tuple[str, ...]:
    raw = settings.secrets_key.get_secret_value() if settings.secrets_key is not None else ""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _file_key(path: Path) -> str:
    """The key in the key file, made first (by whichever process gets there first) when there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{_random.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(Fernet.generate_key().decode() + "\n")
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process has just made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


@lru_cache(maxsize=4)
def _box(keys: tuple[str, ...], file_path: Path) -> tuple[MultiFernet, Fernet]:
    """The keys as (all of them, the one that encrypts); from the key file when none is configured."""
    if not keys:
        keys = (_file_key(file_path),)
        log.warning(
            "FT_SECRETS_KEY is unset: tenant secrets are encrypted with the key in %s. Every API and worker process "
            "must read the same key (set FT_SECRETS_KEY on a fleet), and without it the secrets are lost: back it up.",
            file_path,
        )
    try:
        fernets = [Fernet(k) for k in keys]
    except ValueError:
        raise ValueError(
            "FT_SECRETS_KEY: each key must be a Fernet key (32 url-safe base64-encoded bytes); make one with "
            "`ftctl secrets make-key`"
        ) from None
    return MultiFernet(fernets), fernets[0]


def box() -> tuple[MultiFernet, Fernet]:
    return _box(_configured_keys(), key_file())


def check_key() -> None:
    """At startup: load the keys (making the key file if needed), so a bad FT_SECRETS_KEY stops the process early."""
    box()


def key_source() -> str:
    return "FT_SECRETS_KEY" if _configured_keys() else str(key_file())


def encrypt(value: str) -> str:
    return PREFIX + box()[1].encrypt(value.encode()).decode()


def decrypt(stored: str) -> str:
    """The clear value of a stored secret (a row from before encryption is returned as it is)."""
    if not stored.startswith(PREFIX):
        return stored
    try:
        return box()[0].decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            f"a tenant secret cannot be decrypted with the keys in {key_source()}: the key that encrypted it was "
            "removed; put it back in FT_SECRETS_KEY (after the new one) and run `ftctl secrets reencrypt`"
        ) from None


def reencrypted(stored: str) -> str | None:
    """The stored value encrypted under the first key, or None when it already is."""
    if not stored.startswith(PREFIX):
        return encrypt(stored)
    token = stored.removeprefix(PREFIX).encode()
    try:
        box()[1].decrypt(token)
        return None
    except InvalidToken:
        pass
    try:
        return PREFIX + box()[0].rotate(token).decode()
    except InvalidToken:
        raise SecretUnreadable(f"a tenant secret cannot be decrypted with the keys in {key_source()}") from None
