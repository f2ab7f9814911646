"""The applications: the command line, serve, demo, bench and status."""
