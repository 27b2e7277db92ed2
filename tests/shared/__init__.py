"""Test package (mirrors the source tree)."""
