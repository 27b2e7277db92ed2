"""Tests of shared/quality/."""
