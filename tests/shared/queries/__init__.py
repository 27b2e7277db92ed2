"""Tests of shared.queries (mirrors the package)."""
