"""The manager's life cycle, as the spec draws it."""

from __future__ import annotations

import enum


class ManagerState(enum.Enum):
    """Uninitialized → Allocated → Loaded → Active → Closed; it only moves forward."""

    UNINITIALIZED = "uninitialized"
    ALLOCATED = "allocated"
    LOADED = "loaded"
    ACTIVE = "active"
    CLOSED = "closed"
