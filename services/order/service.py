"""Service of the order service."""
