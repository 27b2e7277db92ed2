"""Security headers on every response: no sniffing or framing, a CSP, Cache-Control."""
from __future__ import annotations

import base64
import hashlib
import re

from flask import Flask, Response, request

# Every response: no MIME sniffing, never framed, no referrer leaves with a link.
_ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

# HTML pages (/docs, the index) load only their own assets. Swagger UI sets inline styles
# from its scripts; its one inline <script> (the page's config) is allowed by its hash, which
# is computed from the page itself, so no 'unsafe-inline' for scripts.
_CSP_BASE = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
             "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.I)

# Answers that depend on who asks or that change with every job are never stored by a cache;
# public reads may be kept but must be revalidated (a publish shows on the very next request).
_NO_STORE_PREFIXES = ("/jobs", "/runs", "/health", "/stats")
NO_STORE = "no-store"
REVALIDATE = "no-cache"


def content_security_policy(html: bytes) -> str:
    """The CSP of an HTML page: same-origin only, its inline scripts allowed by their hash."""
    hashes = sorted({
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    })
    script_src = " ".join(["'self'", *hashes])
    return f"{_CSP_BASE}; script-src {script_src}"


def cache_control_for(path: str, method: str, status: int, authorized: bool) -> str:
    """Cache-Control of a JSON (or text) answer, by endpoint, method and status."""
    if method not in ("GET", "HEAD") or authorized or status >= 400:
        return NO_STORE
    if path.startswith(_NO_STORE_PREFIXES):
        return NO_STORE
    return REVALIDATE


def init_security_headers(app: Flask) -> None:
    """Add the headers to every response the app gives (errors included)."""

    @app.after_request
    def _headers(response: Response) -> Response:
        headers = response.headers
        for name, value in _ALWAYS.items():
            headers.setdefault(name, value)
        if response.mimetype == "text/html":
            if not response.direct_passthrough and not response.is_streamed:
                headers["Content-Security-Policy"] = content_security_policy(
                    response.get_data())
            else:
                headers["Content-Security-Policy"] = content_security_policy(b"")
        if "Cache-Control" not in headers:
            headers["Cache-Control"] = cache_control_for(
                request.path, request.method, response.status_code,
                "Authorization" in request.headers)
        return response
