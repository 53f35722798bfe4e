"""Schemas of the commission service."""
