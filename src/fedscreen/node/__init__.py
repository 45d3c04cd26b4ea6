"""The county node: home, store, ingest and (later) the query engine and servicer."""
