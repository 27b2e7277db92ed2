"""Tests of shared/batch/."""
