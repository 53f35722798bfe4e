"""Models of the order service."""
