"""Tests of shared/storage/."""
