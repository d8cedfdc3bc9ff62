"""A secret string that never shows itself: stack config PSKs and keys, and the renderer's PSKs."""


class Secret:
    """A secret string from the stack config. ``str()`` and ``repr()`` never show it; ``.reveal()`` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
