"""Managing LM Studio: load, unload, list, estimate, download, over the `lmstudio` SDK or the v1 REST API.
Imports lmstudio, store and core; never a command or the router."""
