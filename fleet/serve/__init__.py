"""``fleet serve``: one long-lived process per user and state directory. It keeps SSH connections
warm for every face (like OpenSSH's ControlPersist) and follows every open dispatch to its end,
journaling needs-input and completion once, with nobody at a terminal.

:mod:`fleet.serve.paths` (where its socket and lock live), :mod:`fleet.serve.client` (what a
face uses: cheap to import), :mod:`fleet.serve.server` (the service), :mod:`fleet.serve.follow`
(open dispatches, followed and recovered after a restart), :mod:`fleet.serve.unit` (systemd and
launchd files)."""
