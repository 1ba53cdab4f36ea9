"""The effective configuration (secrets masked), editable key by key, written with tomli-w.

What is shown is ``Config.to_dict()``: the file plus environment overrides, secrets as ``********``.
Editing collects changes; writing applies only those to the file's own TOML (``pgdr_tui.configfile``),
so a masked secret or an environment value is never written into the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from backend.config import ENVIRONMENT, MASK
from backend.errors import PgdrError
from pgdr_tui import configfile
from pgdr_tui.screens.base import BaseScreen, calm
from pgdr_tui.widgets.para import Para


def _file_keys(path: Path | None) -> set[tuple[str, str]]:
    """The (section, key) pairs the config file sets itself (the rest are defaults or the environment)."""
    if path is None:
        return set()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return set()
    return {(section, key) for section, values in raw.items() if isinstance(values, dict) for key in values}


class EditValueModal(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="edit.cancel")]

    def __init__(self, section: str, key: str, current: str, secret: bool) -> None:
        super().__init__()
        self.section, self.key, self.current, self.secret = section, key, current, secret

    def compose(self) -> ComposeResult:
        hint = (
            "a secret: type a new value, or leave it empty to keep the current one"
            if self.secret
            else "lists: comma-separated"
        )
        with Vertical(id="dialog"):
            yield Static(Text(f"{self.section}.{self.key}", style="bold"), classes="dialog-title")
            yield Static(Text(hint, style="dim"))
            yield Input(value="" if self.secret else self.current, password=self.secret, id="edit-input")
            yield Static(Text("enter: keep this value (written with w)   escape: cancel", style="dim"))

    def on_mount(self) -> None:
        calm(self)
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SettingsScreen(BaseScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e,enter", "edit", "Edit", id="settings.edit", tooltip="Change the selected value"),
        Binding("w", "write", "Write file", id="settings.write", tooltip="Write the changes to the config file"),
        Binding("u", "undo", "Undo edits", id="settings.undo", tooltip="Forget the changes not yet written"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.edits: dict[tuple[str, str], Any] = {}
        self.keys: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        yield Para(id="settings-title", classes="title")
        table: DataTable[Text | str] = DataTable(id="settings-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Para(id="settings-note")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("Key", key="key")
        table.add_column("Value", key="value")
        table.add_column("From", key="from")
        super().on_mount()
        self._fill()
        table.focus()

    def _fill(self) -> None:
        cfg = self.pgdr.source.cfg
        env_keys = {v: k for k, v in ENVIRONMENT.items() if os.environ.get(k)}
        in_file = _file_keys(cfg.source)
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        self.keys = []
        for section, values in cfg.to_dict().items():
            for key, value in values.items():
                edited = (section, key) in self.edits
                shown = self.edits[(section, key)] if edited else value
                if configfile.is_secret(section, key) and shown not in ("", MASK):
                    shown = MASK
                if edited:
                    origin = "edited"
                elif (section, key) in env_keys:
                    origin = f"${env_keys[(section, key)]}"
                else:
                    origin = "file" if (section, key) in in_file else "default"
                style = "bold yellow" if edited else ("dim" if shown in ("", [], 0) else "")
                table.add_row(f"{section}.{key}", Text(configfile.render(shown), style=style), origin)
                self.keys.append((section, key))
        if row < table.row_count:
            table.move_cursor(row=row)
        where = cfg.where()
        self.query_one("#settings-title", Static).update(
            Text.assemble(
                (" Configuration", "bold"),
                f"  effective values from {where} and the environment; secrets masked",
            )
        )
        note = (
            (
                f" {len(self.edits)} change(s) not written: w writes them to {where} (TOML comments are not kept;"
                " the old file is kept as .bak)"
            )
            if self.edits
            else " e: edit a value"
        )
        self.query_one("#settings-note", Static).update(Text(note, style="yellow" if self.edits else "dim"))
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("write", "undo"):
            return True if self.edits else None
        return True

    def action_edit(self) -> None:
        table = self.query_one(DataTable)
        if not self.keys:
            return
        section, key = self.keys[table.cursor_row]
        secret = configfile.is_secret(section, key)
        current = configfile.render(self.pgdr.source.cfg.to_dict()[section][key])

        def done(value: str | None) -> None:
            if value is None or (secret and value == ""):
                return
            try:
                self.edits[(section, key)] = configfile.coerce(section, key, value)
            except PgdrError as exc:
                self.notify(str(exc), severity="error")
                return
            self._fill()

        self.app.push_screen(EditValueModal(section, key, current, secret), done)

    def action_undo(self) -> None:
        self.edits.clear()
        self._fill()

    def action_write(self) -> None:
        cfg = self.pgdr.source.cfg
        if not self.edits:
            return
        if cfg.source is None:
            self.notify(
                "the configuration comes from the environment only: there is no file to write", severity="error"
            )
            return
        try:
            new_cfg, kept = configfile.write_config(cfg.source, self.edits, now=self.pgdr.source.now())
        except PgdrError as exc:
            self.notify(str(exc), title="Not written", severity="error")
            return
        self.pgdr.source.cfg = new_cfg
        self.edits.clear()
        self._fill()
        self.notify(f"wrote {cfg.source}" + (f" (old version kept as {kept.name})" if kept else ""))
