"""The offline auditor: verifies audit bundles (logs, signatures, budgets, releases)."""
