"""Tests of shared/identity/."""
