"""Tests of shared/backfill/."""
