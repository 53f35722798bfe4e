"""Service of the user service."""
