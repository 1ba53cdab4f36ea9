"""Textual's footer, rebuilt only when the keys it shows change, and never cut mid-word."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import groupby
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup  # the footer's parts have no public name

#: Which keys go first when the footer is too narrow for all: quitting and help work on every screen
#: (and are listed by ``?`` and ctrl+p), the screen's own keys are what the footer is for.
LAST_SHOWN = ("quit", "help")

Entry = tuple[Binding, bool, str]
Item = tuple[Binding.Group | None, list[Entry]]


class KeysFooter(Footer):
    """The footer of every screen.

    Textual's Footer recomposes (a widget per key, each styled anew) on every bindings signal: the
    screen mounting, each focus change, each ``refresh_bindings``. Opening the console sent four of
    them, and at a year's catalog those recomposes were a third of the time to a drawn timeline
    (1.15 s with them, 0.83 s without); the keys shown had changed in two. The keys, their labels,
    whether each is enabled and its tooltip are what ``Footer.compose`` draws, so when none of
    them changed, neither would the footer.

    Textual lays the keys out left to right and lets the command palette's key, docked right, cover
    whatever does not fit ("q Qui▏^p palette"). Here the keys that do not fit the width are left out,
    quit and help first (see ``LAST_SHOWN``), so every key shown is whole.
    """

    _composed: tuple[Any, ...] | None = None

    def _shown(self) -> tuple[Any, ...]:
        return (
            self.size.width,
            tuple(
                (binding.key, binding.action, binding.description, enabled, tooltip)
                for _, binding, enabled, tooltip in self.screen.active_bindings.values()
                if binding.show
            ),
        )

    async def recompose(self) -> None:
        if not self.is_attached:
            return  # as Widget.recompose: gone with its screen meanwhile
        shown = self._shown()
        if shown == self._composed:
            return
        self._composed = shown
        await super().recompose()

    def on_resize(self) -> None:
        if self.is_attached and self._bindings_ready:
            self.call_after_refresh(self.recompose)

    def compose(self) -> ComposeResult:
        """``Footer.compose`` (non-compact, groups combined) with the keys that fit the width."""
        if not self._bindings_ready:
            return
        active = self.screen.active_bindings
        by_action: defaultdict[str, list[Entry]] = defaultdict(list)
        for _, binding, enabled, tooltip in active.values():
            if binding.show:
                by_action[binding.action].append((binding, enabled, tooltip))
        palette: Entry | None = None
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            found = active.get(self.app.COMMAND_PALETTE_BINDING)
            if found is not None:
                palette = (found[1], found[2], found[3])
        items = list(self._items(by_action.values()))
        room = self.size.width or self.app.size.width
        if palette is not None:
            # "▏^p palette": its border, the key padded, the description.
            room -= 1 + len(self.app.get_key_display(palette[0])) + 2 + len(palette[0].description)
        items = _fitting(items, room, self.app.get_key_display)
        for group, entries in items:
            if group is not None:
                with KeyGroup(classes="-compact" if group.compact else ""):
                    for binding, enabled, tooltip in entries:
                        yield FooterKey(
                            binding.key,
                            self.app.get_key_display(binding),
                            "",
                            binding.action,
                            disabled=not enabled,
                            tooltip=tooltip or binding.description,
                            classes="-grouped",
                        ).data_bind(compact=Footer.compact)
                yield FooterLabel(group.description)
            else:
                binding, enabled, tooltip = entries[0]
                yield FooterKey(
                    binding.key,
                    self.app.get_key_display(binding),
                    binding.description,
                    binding.action,
                    disabled=not enabled,
                    tooltip=tooltip,
                ).data_bind(compact=Footer.compact)
        if palette is not None:
            binding, enabled, tooltip = palette
            yield FooterKey(
                binding.key,
                self.app.get_key_display(binding),
                binding.description,
                binding.action,
                classes="-command-palette",
                disabled=not enabled,
                tooltip=binding.tooltip or binding.description,
            )

    def _items(self, actions: Iterable[list[Entry]]) -> Iterable[Item]:
        """What ``Footer.compose`` draws, item by item: a group of keys under one label, or one key."""
        for group, grouped in groupby(actions, lambda entries: entries[0][0].group):
            multi = list(grouped)
            if group is not None and len(multi) > 1:
                yield group, [entries[0] for entries in multi]
            else:
                for entries in multi:
                    yield None, [entries[0]]


def _fitting(items: list[Item], room: int, display: Callable[[Binding], str]) -> list[Item]:
    """``items`` without those that do not fit ``room`` columns, dropped in ``LAST_SHOWN`` order, then
    from the end. ``display`` is how the app writes a key (``App.get_key_display``)."""

    def width(item: Item) -> int:
        group, entries = item
        if group is not None:  # " ←→ scrub ": padding, the keys, a margin, the label, a margin
            return 1 + sum(len(display(b)) for b, _, _ in entries) + 1 + len(group.description) + 1
        binding = entries[0][0]
        return len(display(binding)) + len(binding.description) + 3  # " q Quit "

    kept = list(items)
    for action in [*LAST_SHOWN, *([None] * len(items))]:
        if sum(width(item) for item in kept) <= room:
            break
        if action is None:
            kept.pop()
        else:
            kept = [item for item in kept if item[0] is not None or item[1][0][0].action != action]
    return kept
