"""The `sonitor` command."""
