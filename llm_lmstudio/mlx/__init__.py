"""Native MLX chat and embedding models run in-process (mlx imports stay inside functions), their prompt caches.
Imports only store and core."""
