"""Responses recorded from real LM Studio servers (SOURCES.md) and the loopback server that replays them.
Data and a test helper only; nothing here may reach the network or a real LM Studio."""
