"""Models of the user service."""
