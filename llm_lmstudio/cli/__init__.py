"""The `llm lmstudio ...` click commands: parse, call one function of a layer below, print (tables, --json).
The top layer: nothing in the plugin imports it but the hooks."""
