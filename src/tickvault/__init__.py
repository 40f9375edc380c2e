"""tickvault: fast, measured plumbing for Python trading bots on Alpaca."""

__version__ = "0.1.0"
