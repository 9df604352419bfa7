"""extra-usage-proxy: request enforcement for Claude Team and Enterprise extra usage."""

__version__ = "0.1.0"
