"""Tests of shared/notify/."""
