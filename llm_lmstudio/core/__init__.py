"""Settings, errors, the plugin's own files and OpenAI-style message building: what every layer above shares.
Imports nothing from the plugin's other subpackages."""
