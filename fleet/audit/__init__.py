"""The audit plane: the trail, the journal, Slack delivery, session records."""
