"""Safety: the gate (modes, plans, confirmation), tokens, redaction of secrets."""
