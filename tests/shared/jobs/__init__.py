"""Tests of shared/jobs/."""
