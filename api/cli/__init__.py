"""The `flask etl` command group and its progress display."""
