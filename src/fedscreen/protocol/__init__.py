"""The signed messages every role re-checks: query, answer, combination, release, budget."""
