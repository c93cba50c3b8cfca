"""Text shown to people: names and paths from files and the OS, made safe to print."""

from __future__ import annotations

import os


def printable(text: str | os.PathLike[str]) -> str:
    """``text`` with every character a terminal could act on written as an escape.

    Control characters (an ESC starting a terminal sequence, a newline that forges an output
    line), invisible format characters (a right-to-left override) and the lone surrogates
    that stand for undecodable bytes in a file name come out as ``\\x1b``, ``\\u202e``,
    ``\\udcff``: what ``repr`` would show, without the quotes.
    """
    text = os.fspath(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
