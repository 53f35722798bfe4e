"""Models of the stats service."""
