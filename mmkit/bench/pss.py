"""Proportional set size: a process's memory, each shared page split among the processes mapping it.

RSS counts a shared page in full in every process that maps it; PSS counts 1/n of it in each
of n, so the PSS of processes that share memory adds up to what they hold together. Linux
reports it in ``/proc/<pid>/smaps_rollup`` (4.14 and later).
"""

from __future__ import annotations

from pathlib import Path

from mmkit.values.units import KiB

_OWN = Path("/proc/self/smaps_rollup")


def pss(pid: int | None = None, kind: str = "Pss") -> int | None:
    """Bytes of PSS of process ``pid`` (this one by default); None where the OS does not say.

    ``kind="Pss_Shmem"``: only its share of shared memory (memfd, ``/dev/shm``), 0 on
    kernels before 5.x that do not split PSS by kind.
    """
    if not _OWN.is_file():
        return None
    path = _OWN if pid is None else Path(f"/proc/{pid}/smaps_rollup")
    for line in path.read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) * KiB
    if kind != "Pss":
        return 0
    raise OSError(f"{path} has no Pss line")
