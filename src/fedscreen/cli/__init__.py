"""The ``fedscreen`` command: one module per subcommand group."""
