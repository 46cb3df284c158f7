"""Shared fixtures. Ray, where a test needs it, is started once per session on loopback."""

import os

# Keep every Ray node on 127.0.0.1 (must be set before Ray starts).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
