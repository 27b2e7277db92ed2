"""Replay upstream server faking CoinGecko and CoinPaprika for tests and demos."""
from tests.upstream.server import (
    FAULT_MODES,
    ReplayUpstream,
    UpstreamControl,
    max_requests_in_window,
)

__all__ = ["FAULT_MODES", "ReplayUpstream", "UpstreamControl", "max_requests_in_window"]
