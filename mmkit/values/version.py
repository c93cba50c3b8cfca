"""The release, in one place: the package metadata and ``mmkit --version`` read it here."""

VERSION = "0.1.0"
