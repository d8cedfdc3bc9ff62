"""Throwaway SSH keys for lab runs (the operator's key, a host key for rendering): never a user's key."""

from __future__ import annotations


def ed25519_keypair(comment: str) -> tuple[str, str]:
    """A fresh Ed25519 key: (OpenSSH private key text, `ssh-ed25519 AAAA... comment` public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"
