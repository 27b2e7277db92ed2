"""Browser tests: headless Chromium against a real gunicorn-served API."""
