"""Recipes: how a machine's normal sound is learned and scored."""
