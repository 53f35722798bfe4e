"""Schemas of the stats service."""
