"""Helpers shared by the CLI tests."""

from __future__ import annotations


def one_line_error(capsys, command: str) -> str:
    """The command's error: one line, ``lmadda <command>: error: ...``, no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lmadda {command}: error: "), err
    assert "\n" not in err and "Traceback" not in err
    return err
