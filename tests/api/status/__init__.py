"""Tests of api/status/."""
