"""The agent plane: the OpenCode HTTP client, its event stream, usage, following a turn."""
