"""Transparency log: RFC 9162 Merkle trees, an SQLite-backed log and C2SP checkpoints."""
