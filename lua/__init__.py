"""The Lua scripts, one file per atomic operation, shipped as package data (proxy.lua)."""
