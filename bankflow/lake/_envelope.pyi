"""Type stub of the C decoder (`_envelope.c`): see its header comment for the layout of what it returns."""

from typing import Any

MAX_DEPTH: int

def decode(values: list[Any], kinds: bytes, names: tuple[bytes, ...], bounds: bytes, /) -> tuple[Any, ...]: ...
def msgspec_safe(value: bytes, max_depth: int, /) -> bool: ...
