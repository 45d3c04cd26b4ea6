"""Signatures: Ed25519 (PyNaCl, only here) and DSSE envelopes."""
