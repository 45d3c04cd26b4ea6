"""The second aggregator of secure queries: it dials the coordinator, sums its own shares of
the nodes' answers, adds one noise draw and signs its partial, under a use-once rule."""
