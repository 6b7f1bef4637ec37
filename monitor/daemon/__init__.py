"""The long-running daemon."""
