"""Tests of the source clients (shared/sources)."""
