"""Type stub of the C decoder (`_envelope.c`): see its header comment for the layout of what it returns."""

from typing import Any

def decode(values: list[Any], kinds: bytes, names: tuple[bytes, ...], /) -> tuple[Any, ...]: ...
