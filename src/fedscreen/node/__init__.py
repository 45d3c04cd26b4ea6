"""The county node: home, ingest, store, ledger, the query engine and the agent that dials out."""
