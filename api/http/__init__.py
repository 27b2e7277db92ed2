"""HTTP plumbing every resource shares: auth, limits, security, errors, envelopes, caches."""
