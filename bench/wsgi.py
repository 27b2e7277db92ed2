"""The API as the benchmark serves it: the product app, with the per-client read quota lifted.

All load comes from one loopback address, so the 600/minute read quota would turn the
measurement into a measurement of 429s. The limiter still runs (its Redis round trip is part
of every request), only with a quota the benchmark cannot reach.
"""
from api import create_app

app = create_app({"RATELIMIT_READS": "100000000/minute"})
