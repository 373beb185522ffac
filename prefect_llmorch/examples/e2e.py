"""End-to-end encryption case study: key derivation and sealing (CPU), key directory and
transfers (I/O).

"Send these two messages end-to-end encrypted to Alice and Bob, and give me the receipts."
The plan fetches each recipient's public key from a key directory (I/O-bound), seals each
message (CPU-bound: PBKDF2-HMAC-SHA256 key derivation from the sender's master passphrase
and the recipient's key, then a SHA-256 keystream cipher and an HMAC tag), uploads the
sealed messages (I/O-bound) and digests the receipts for an audit log (CPU-bound).

The sender's master passphrase lives in the `e2e-master` ToolCredentials block (secret
`passphrase`); `seal` receives it in its `credentials` parameter inside a compute worker
process, never through task parameters. Results carry the key's fingerprint, never the key.

    llmorch check prefect_llmorch/examples/e2e.plan -t prefect_llmorch.examples.e2e:toolbox
"""

from __future__ import annotations

import hashlib
import hmac
import time

from prefect_llmorch import Toolbox, compute, inout

_DIRECTORY = {"alice": "alice-ed25519-3f9a", "bob": "bob-ed25519-77c1", "carol": "carol-ed25519-0b52"}


@inout(cost=0.3)
def fetch_public_key(user: str) -> str:
    """Look up `user`'s public key in the key directory."""
    time.sleep(0.3)
    key = _DIRECTORY.get(user.lower())
    if key is None:
        raise KeyError(f"{user!r} has no key in the directory")
    return key


def fingerprint(secret: str) -> str:
    """A public fingerprint of a secret (what a key id is): safe to show, cannot be reversed."""
    return hashlib.sha256(b"llmorch-fingerprint:" + secret.encode()).hexdigest()[:16]


@compute(cost=1.0, credentials="e2e-master")
def seal(message: str, recipient_key: str, credentials: dict[str, str], iterations: int = 300_000) -> dict[str, str | int]:
    """Encrypt `message` for the holder of `recipient_key` (PBKDF2 key derivation + keystream + HMAC)."""
    passphrase = credentials.get("passphrase")
    if not passphrase:
        raise PermissionError("the e2e-master block has no `passphrase` secret")
    key = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), recipient_key.encode(), iterations, dklen=64)
    enc_key, mac_key = key[:32], key[32:]
    data = message.encode()
    stream = b"".join(hashlib.sha256(enc_key + i.to_bytes(8, "big")).digest() for i in range(len(data) // 32 + 1))
    ciphertext = bytes(a ^ b for a, b in zip(data, stream))
    tag = hmac.new(mac_key, ciphertext, hashlib.sha256).hexdigest()
    return {
        "recipient_key": recipient_key,
        "ciphertext": ciphertext.hex(),
        "tag": tag,
        "sender_key_id": fingerprint(passphrase),
        "kdf_iterations": iterations,
    }


@inout(cost=0.3)
def upload(sealed: dict, to: str) -> str:
    """Upload a sealed message to the relay for `to`; returns the receipt."""
    time.sleep(0.3)
    body = (str(sealed.get("ciphertext")) + str(sealed.get("tag"))).encode()
    return f"receipt:{to}:from-key-{sealed.get('sender_key_id')}:{hashlib.sha256(body).hexdigest()[:12]}"


@compute(cost=0.5)
def audit_digest(receipts: list[str], rounds: int = 200_000) -> dict[str, object]:
    """A tamper-evident digest of the receipts (iterated SHA-256 hash chain), with the receipts."""
    h = hashlib.sha256("\n".join(receipts).encode()).digest()
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()
    return {"digest": h.hex()[:32], "receipts": list(receipts)}


toolbox = Toolbox(fetch_public_key, seal, upload, audit_digest)
