"""Models of the commission service."""
