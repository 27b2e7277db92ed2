"""Developer tooling for running the Kasparro stack locally (not shipped in the package)."""
