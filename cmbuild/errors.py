"""The one exception type users see: it says what was wrong, where, and what to do."""

from __future__ import annotations


class CmbuildError(Exception):
    """An error meant for the user: printed without a traceback.

    ``where`` names the place (a file, a key path, a layer and entry, a URL);
    ``hint`` says what to do about it.
    """

    def __init__(self, message: str, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class RegistryUnavailable(CmbuildError):
    """A registry cannot be used now: it cannot be reached, keeps failing (5xx, 429), or
    refuses the credentials. (A remote cache is then left alone; a pull fails.)"""
