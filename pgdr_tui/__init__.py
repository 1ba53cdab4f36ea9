"""pgdr's front ends: the ``pgdr`` command line and the Textual operator console.

This package's import must stay free of Textual: ``pgdr wal-push`` enters through ``pgdr_tui.cli``.
"""
