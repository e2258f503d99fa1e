"""How a webhook is signed: Standard Webhooks (`webhook-signature: v1,<base64>`), and `X-FT-Signature` for one release.

Standard Webhooks (https://www.standardwebhooks.com, spec 1.0.0) signs `{webhook-id}.{webhook-timestamp}.{body}`
with HMAC-SHA256 and sends the base64 digest as `v1,<digest>`, so any receiver verifies with the
`standardwebhooks` package alone: `Webhook(secret).verify(body, headers)`. The key is the secret's bytes: for a
`whsec_<base64>` secret (what POST /admin/tenants/{tenant}/webhook-secret makes) the base64 after the prefix,
decoded, exactly as the library derives it; for any other string (an FT_WEBHOOK_SECRET chosen by hand, a tenant
secret made before secrets were standard base64) its UTF-8 bytes, which a receiver passes as
`Webhook(base64.b64encode(secret.encode()).decode())` (or `Webhook(secret.encode())` in Python).

`X-FT-Signature: sha256=<hex>` (the HMAC of `<X-FT-Timestamp>.<body>` under the secret's UTF-8 bytes) is what
receivers checked before; it is still sent, deprecated, so they can move over without a flag day.
"""

import base64
import binascii
import hashlib
import hmac
import time

SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of Standard Webhooks signatures: a `whsec_<base64>` secret's decoded bytes, else its UTF-8."""
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else ""
    if encoded:
        try:  # strict: a `-` or `_` (URL-safe base64) is not standard base64 and would be silently dropped
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            key = b""
        if key:
            return key
    return secret.encode()


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`, the value of `webhook-signature`."""
    digest = hmac.new(signing_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The deprecated `X-FT-Signature` value: `sha256=<hex>` of `<timestamp>.<body>` under the secret's UTF-8."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, body: bytes, timestamp: str, signature: str, tolerance_s: float = 300) -> bool:
    """What a receiver of the deprecated `X-FT-Signature` runs: it matches and the timestamp is recent."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def signature_headers(secret: str | None, delivery_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The id, timestamp and (with a secret) signature headers of one attempt, in both schemes.

    The id is the delivery's, the same on every retry (receivers dedupe on it); the timestamp is the attempt's,
    so a retry is fresh while a captured request replayed later is not. Without a secret nothing is signed.
    """
    timestamp = str(int(time.time() if now is None else now))
    headers = {
        "webhook-id": delivery_id,
        "webhook-timestamp": timestamp,
        "X-FT-Delivery": delivery_id,
        "X-FT-Timestamp": timestamp,
    }
    if secret:
        headers["webhook-signature"] = standard_signature(secret, delivery_id, timestamp, body)
        headers["X-FT-Signature"] = sign(secret, timestamp, body)
    return headers
