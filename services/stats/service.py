"""Service of the stats service."""
