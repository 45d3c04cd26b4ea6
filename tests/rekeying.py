"""Re-key a member in place, as an operator does with ``pki issue --replace``.

The member's key files are replaced by new ones (same id, same home: its
database, saved checkpoints and manifest history stay), the authority re-issues
it and the new manifest is installed in its home.
"""

from __future__ import annotations

from pathlib import Path

from fedscreen.crypto.signing import SigningKey
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, install_issued, load_identity

_KEY_FILES = ("signing.key", "tls.key", "identity.json", "request.json", "tls.pem")


def rekey_in_place(
    auth: Path, home: Path, *, member_id: str, role: str, name: str, level: str = ""
) -> SigningKey:
    """New keys for ``member_id`` in ``home``, issued with ``replace``; returns the new key."""
    old = load_identity(home).signing_key().public_key
    for name_ in _KEY_FILES:
        (home / name_).unlink(missing_ok=True)
    create_identity(home, member_id=member_id, role=role, name=name, level=level)
    cert_pem, _ = authority.issue(auth, load_identity(home).request_path, replace=True)
    install_issued(
        home,
        cert_pem,
        authority.load_authority(auth).ca_pem,
        authority.manifest_text(auth),
    )
    key = load_identity(home).signing_key()
    assert key.public_key != old
    return key
