"""The daemon's one config schema and the example generated from it."""
