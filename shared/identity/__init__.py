"""Identity: each source's own coin id resolved to one canonical asset."""
