"""Textual's footer, rebuilt only when the keys it shows change."""

from __future__ import annotations

from typing import Any

from textual.widgets import Footer


class KeysFooter(Footer):
    """The footer of every screen.

    Textual's Footer recomposes (a widget per key, each styled anew) on every bindings signal: the
    screen mounting, each focus change, each ``refresh_bindings``. Opening the console sent four of
    them, and at a year's catalog those recomposes were a third of the time to a drawn timeline
    (1.15 s with them, 0.83 s without); the keys shown had changed in two. The keys, their labels,
    whether each is enabled and its tooltip are what ``Footer.compose`` draws, so when none of
    them changed, neither would the footer.
    """

    _composed: tuple[Any, ...] | None = None

    def _shown(self) -> tuple[Any, ...]:
        return tuple(
            (binding.key, binding.action, binding.description, enabled, tooltip)
            for _, binding, enabled, tooltip in self.screen.active_bindings.values()
            if binding.show
        )

    async def recompose(self) -> None:
        if not self.is_attached:
            return  # as Widget.recompose: gone with its screen meanwhile
        shown = self._shown()
        if shown == self._composed:
            return
        self._composed = shown
        await super().recompose()
