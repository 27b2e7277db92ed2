"""Storage upkeep: time partitions of the big tables (created ahead and on demand)."""
