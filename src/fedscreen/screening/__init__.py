"""What a screening record is: export columns, vocabularies and instruments (as data)."""
