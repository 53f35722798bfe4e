"""Schemas of the order service."""
