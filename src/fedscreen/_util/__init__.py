"""Private plumbing: atomic files, one SQLite transaction, one canonical JSON."""
