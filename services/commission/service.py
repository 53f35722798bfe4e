"""Service of the commission service."""
