"""Ingest: run execution, the batch pipeline, the batch writer, raw line blocks, publishing."""
