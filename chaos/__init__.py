"""The fault-injection harness (``make chaos``, ``python -m chaos``): docs/reliability.md."""
