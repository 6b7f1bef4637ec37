"""The model package and everything that scores with it (no torch)."""
