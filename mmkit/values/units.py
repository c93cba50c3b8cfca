"""Byte units and size formatting."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def format_size(nbytes: int) -> str:
    """Human-readable size in binary units: ``format_size(3 * MiB) == '3.0 MiB'``."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"
