"""Identifiers of dimensions and layers."""

from __future__ import annotations

import operator

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


class LayerId(tuple[DimensionId, int]):
    """Layer ``index`` (0-based) of ``dimension``: an immutable, validated pair.

    A tuple underneath, so it hashes and compares at C speed as a table key and cannot be
    changed after it was checked.
    """

    __slots__ = ()

    def __new__(cls, dimension: object, index: object) -> LayerId:
        return super().__new__(cls, (DimensionId(dimension), _index(index, "a layer index", 0)))

    def __getnewargs__(self) -> tuple[DimensionId, int]:
        return (self[0], self[1])

    @property
    def dimension(self) -> DimensionId:
        return self[0]

    @property
    def index(self) -> int:  # type: ignore[override]  # the field, not tuple.index()
        return self[1]

    def __repr__(self) -> str:
        return f"LayerId(dimension={self[0]!r}, index={self[1]})"

    def __str__(self) -> str:
        return f"{self[0]}/L{self[1]:02d}"
