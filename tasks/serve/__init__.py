"""Serving: `ratchet serve-model` answers from production and follows it (app.py)."""
