"""Helpers the test modules share: waiting, served processes, data rows (never test modules)."""
