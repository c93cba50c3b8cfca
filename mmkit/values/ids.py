"""Identifiers of dimensions and layers."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from mmkit.values.errors import InvalidId


def _index(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise InvalidId(f"{what} must be an integer, not {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidId(f"{what} must be an integer, not {value!r}") from None
    if number < minimum:
        raise InvalidId(f"{what} must be at least {minimum}, not {number}")
    return number


class DimensionId(int):
    """A dimension's number, 1-based as in the spec (D01 … D14)."""

    __slots__ = ()

    def __new__(cls, value: object) -> DimensionId:
        if isinstance(value, DimensionId):
            return value
        return super().__new__(cls, _index(value, "a dimension id", 1))

    def __repr__(self) -> str:
        return f"DimensionId({int(self)})"

    def __str__(self) -> str:
        return f"D{int(self):02d}"


@dataclass(frozen=True, slots=True)
class LayerId:
    """Layer ``index`` (0-based) of ``dimension``."""

    dimension: DimensionId
    index: int

    def __init__(self, dimension: object, index: object) -> None:
        object.__setattr__(self, "dimension", DimensionId(dimension))
        object.__setattr__(self, "index", _index(index, "a layer index", 0))

    def __str__(self) -> str:
        return f"{self.dimension}/L{self.index:02d}"
