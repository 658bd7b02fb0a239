"""Protocols: where image bytes live (host files)."""
