"""Transparency logs: RFC 9162 Merkle trees, C2SP checkpoints, members' signed logs."""
