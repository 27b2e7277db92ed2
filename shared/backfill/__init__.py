"""Backfills: request, plan, fetch and run historical loads in chunks."""
