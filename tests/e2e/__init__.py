"""End-to-end tests: real processes against real PostgreSQL and Redis."""
