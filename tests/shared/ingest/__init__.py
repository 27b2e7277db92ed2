"""Tests of shared/ingest/."""
