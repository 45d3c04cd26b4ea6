"""A whole federation on one machine: the quick-start demo."""
