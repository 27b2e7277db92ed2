"""The Batch types sources produce and the COPY formats the writer uses."""
