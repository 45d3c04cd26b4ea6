"""The province's coordinator: relays signed queries, releases and logs their combination."""
