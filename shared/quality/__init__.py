"""Quality: per-quote checks, the batch's flags, cross-source consensus, run anomalies."""
