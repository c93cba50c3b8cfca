"""``ShareHandle``: what a process needs to attach to an owner's shared memory, as a token.

The token names the owner's process and its descriptor of the memory (on Windows, its three
handles packed into one number), the user both must run as, and a random nonce the memory
itself carries: a token whose process has exited, or whose number now names something
else, fails the nonce check rather than attach to it. It is plain printable text, so it
travels by pickle, environment variable or command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmkit.values.errors import AttachError

FORMAT = 1
"""The share format: the token's and the shared memory's layout. Another one is refused."""

_PREFIX = "mmkit-share-"
_TOKEN = re.compile(
    r"mmkit-share-([0-9]{1,4}):([0-9]{1,10}):([0-9]{1,10}):([0-9]{1,29}):([0-9a-f]{32})"
)


@dataclass(frozen=True, slots=True)
class ShareHandle:
    """A multi-use, picklable way to attach to a manager's shared memory (``mmkit.attach``).

    ``str(handle)`` is the token; ``ShareHandle.parse(token)`` gives the handle back.
    """

    uid: int
    pid: int
    handle: int
    nonce: str

    def __str__(self) -> str:
        return f"{_PREFIX}{FORMAT}:{self.uid}:{self.pid}:{self.handle}:{self.nonce}"

    @classmethod
    def parse(cls, token: object) -> ShareHandle:
        """The handle a token stands for; ``AttachError`` naming what is wrong with it."""
        if isinstance(token, ShareHandle):
            return token
        if not isinstance(token, str):
            raise AttachError(
                f"attach needs a ShareHandle or its token (str), not {type(token).__name__}"
            )
        if len(token) > 256:
            raise AttachError(f"not a share token: {len(token)} characters is too long")
        version = token[len(_PREFIX) :].partition(":")[0] if token.startswith(_PREFIX) else ""
        if version.isascii() and version.isdecimal() and int(version) != FORMAT:
            raise AttachError(
                f"the token is share format {int(version)}; this mmkit reads format {FORMAT} "
                "(owner and reader must run compatible mmkit versions)"
            )
        match = _TOKEN.fullmatch(token)
        if match is None:
            shown = token if len(token) <= 80 else token[:77] + "..."
            raise AttachError(f"not a share token (mmkit-share-{FORMAT}:…): {shown!r}")
        _, uid, pid, handle, nonce = match.groups()
        if int(pid) == 0:
            raise AttachError(f"not a share token: process id 0 in {token!r}")
        return cls(int(uid), int(pid), int(handle), nonce)
