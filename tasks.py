"""The checkout's Invoke tasks (``inv --list``): the same collection as the installed ``fleet``
command, which lives in the package (``fleet/cli/``), read the same way (flags, messages, exit
statuses, settings)."""
from fleet.cli.program import adopt_invoke
from fleet.cli.tasks import ns  # noqa: F401 - Invoke finds the collection by this name

adopt_invoke()
