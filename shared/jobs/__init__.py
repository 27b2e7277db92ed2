"""Jobs: submit (create, enqueue after commit, fail when unsent) and close (finalize, reap)."""
