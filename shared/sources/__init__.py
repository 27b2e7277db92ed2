"""Source registry: one module per source, looked up by name."""
from __future__ import annotations

from shared.config import Settings
from shared.sources.base import Source


def get_source(name: str, settings: Settings) -> Source:
    """Build the source named `name` (`coingecko`, `coinpaprika`, `csv`)."""
    # Imported here so that a process only loads the clients it uses.
    if name == "csv":
        from shared.sources.csv_source import CsvSource

        return CsvSource(settings)
    if name == "coingecko":
        from shared.sources.coingecko import CoinGeckoSource

        return CoinGeckoSource(settings)
    if name == "coinpaprika":
        from shared.sources.coinpaprika import CoinPaprikaSource

        return CoinPaprikaSource(settings)
    raise KeyError(name)
