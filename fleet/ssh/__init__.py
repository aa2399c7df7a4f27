"""The SSH plane: sessions, ssh_config, host keys, preflight, the fanout runner, canary, streams, artifacts."""
