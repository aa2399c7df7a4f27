"""An audit trail made on first use."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from fleet.audit.trail import AuditTrail


class LazyTrail:
    """An audit trail made on first use (reading the inventory's secrets costs an HTTP client's
    import): a face that hands its work to the service never pays for it."""

    def __init__(self, make: Callable[[], AuditTrail]) -> None:
        self._make = make
        self._trail: AuditTrail | None = None

    def __getattr__(self, name: str) -> Any:
        if self._trail is None:
            if name in ("status", "last_error"):
                return None
            self._trail = self._make()
        return getattr(self._trail, name)

    def close(self, timeout: float | None = None) -> bool:
        """Close the trail if it was made (True: everything delivered, or nothing to deliver)."""
        return True if self._trail is None else self._trail.close(timeout)
