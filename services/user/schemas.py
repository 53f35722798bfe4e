"""Schemas of the user service."""
