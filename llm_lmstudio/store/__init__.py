"""The plugin's own SQLite files: the response cache, the call history the router learns from, statistics.
Imports only core."""
