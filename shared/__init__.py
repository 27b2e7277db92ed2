"""Kasparro's shared package: settings, models, sources and ETL logic used by api and worker."""
