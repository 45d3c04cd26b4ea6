"""The analyst's side: sign queries, submit them, verify releases and budget statements."""
