"""Shipped defaults (the price table), installed as package data (proxy.defaults)."""
