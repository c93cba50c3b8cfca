"""What some OS lacks, as names and text a test module can hold.

Each rule says on which platforms the thing does not work (``broken_on``) and, where that
differs, on which it is not even there to ``hasattr`` (``absent_on``): macOS has
``resource.RLIMIT_AS`` but does not enforce it on mmap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PLATFORMS = ("linux", "darwin", "win32")
NAMES = {"linux": "Linux", "darwin": "macOS", "win32": "Windows"}

LINUX_ONLY = frozenset({"darwin", "win32"})
POSIX_ONLY = frozenset({"win32"})


@dataclass(frozen=True)
class Rule:
    """Something only some platforms have, and how a module names it.

    ``names`` matches whole identifiers wherever they appear (``RLIMIT_AS``,
    ``resource.RLIMIT_AS``); ``attributes`` matches an attribute of one module only
    (``os.fork``, or ``from os import fork``); ``text`` is searched in string literals;
    ``modules`` are modules whose import is the use; with ``import_safe`` the module imports
    on every OS, so only an import inside a test (where its functions will be called) counts.
    """

    label: str
    why: str
    broken_on: frozenset[str]
    names: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    modules: frozenset[str] = frozenset()
    absent: frozenset[str] | None = field(default=None)
    import_safe: bool = False

    @property
    def absent_on(self) -> frozenset[str]:
        return self.broken_on if self.absent is None else self.absent

    def matches_name(self, name: str) -> bool:
        return self.names is not None and re.fullmatch(self.names, name) is not None

    def matches_attribute(self, owner: str, name: str) -> bool:
        return any(
            owner == module and re.fullmatch(pattern, name) is not None
            for module, pattern in self.attributes
        ) or self.matches_name(name)

    def matches_module(self, module: str) -> bool:
        return module in self.modules

    def in_text(self, text: str) -> bool:
        return self.text is not None and re.search(self.text, text, re.MULTILINE) is not None

    def in_code_text(self, text: str) -> bool:
        """Whether code that could not be parsed names this rule's identifiers or modules."""
        patterns = [rf"\b(?:{self.names})\b"] if self.names else []
        patterns += [rf"\b{owner}\.(?:{pattern})\b" for owner, pattern in self.attributes]
        patterns += [rf"\bimport {m}\b|\bfrom {m} import\b" for m in self.modules]
        return self.in_text(text) or any(re.search(p, text) for p in patterns)


LINUX_MMAP_FLAGS = (
    r"MAP_(?:POPULATE|NORESERVE|HUGETLB|LOCKED|GROWSDOWN|STACK|NONBLOCK|FIXED_NOREPLACE"
    r"|SYNC|SHARED_VALIDATE|UNINITIALIZED|DENYWRITE|EXECUTABLE)"
    r"|MADV_(?:HUGEPAGE|NOHUGEPAGE|POPULATE_READ|POPULATE_WRITE|DONTDUMP|DODUMP|MERGEABLE"
    r"|UNMERGEABLE|REMOVE|DONTFORK|DOFORK|HWPOISON|SOFT_OFFLINE|COLD|PAGEOUT|WIPEONFORK"
    r"|KEEPONFORK|COLLAPSE)"
)

RULES: tuple[Rule, ...] = (
    Rule("/proc", "procfs is Linux's", LINUX_ONLY, text=r"/proc\b"),
    Rule("/sys", "sysfs is Linux's", LINUX_ONLY, text=r"(?<![\w.])/sys/"),
    Rule(
        "vm.max_map_count",
        "the map count limit is Linux's",
        LINUX_ONLY,
        names="max_map_count",
        text=r"max_map_count",
    ),
    Rule(
        "RLIMIT_AS/RLIMIT_DATA",
        "only Linux enforces them on mmap",
        LINUX_ONLY,
        names=r"RLIMIT_(?:AS|DATA)",
        absent=POSIX_ONLY,
    ),
    Rule(
        "mlockall",
        "ENOSYS on macOS, no such call on Windows",
        LINUX_ONLY,
        names=r"m(?:un)?lockall|MCL_[A-Z_]+",
    ),
    Rule("Linux mmap flags", "Linux's own mmap and madvise flags", LINUX_ONLY, LINUX_MMAP_FLAGS),
    Rule(
        "tests.osprobe.linux",
        "Linux's own probes (procfs, the map count limit)",
        LINUX_ONLY,
        modules=frozenset({"tests.osprobe.linux"}),
        import_safe=True,
    ),
    Rule(
        "tests.osprobe.darwin",
        "macOS's own probes (Mach)",
        frozenset({"linux", "win32"}),
        modules=frozenset({"tests.osprobe.darwin"}),
        import_safe=True,
    ),
    Rule(
        "tests.osprobe.windows",
        "Windows' own probes (kernel32)",
        frozenset({"linux", "darwin"}),
        modules=frozenset({"tests.osprobe.windows"}),
        import_safe=True,
    ),
    Rule(
        "mmap constants",
        "Windows' mmap module has no MAP_*, PROT_* or MADV_*",
        POSIX_ONLY,
        names=r"(?:MAP|PROT|MADV)_[A-Z_]+",
    ),
    Rule(
        "resource",
        "the resource module is POSIX",
        POSIX_ONLY,
        names=r"RLIMIT_[A-Z]+|RLIM_INFINITY|[gs]etrlimit|getrusage|ru_maxrss",
        modules=frozenset({"resource"}),
    ),
    Rule(
        "fork",
        "os.fork is POSIX",
        POSIX_ONLY,
        attributes=(("os", r"fork|forkpty|register_at_fork"),),
        text=r"\A(?:fork|forkserver)\Z",
    ),
    Rule(
        "POSIX process and file calls",
        "os has no such call on Windows",
        POSIX_ONLY,
        attributes=(
            (
                "os",
                r"killpg|getpgid|setsid|setpgrp|[gs]et(?:e)?[ug]id|setgroups|l?chown|mkfifo"
                r"|mknod|makedev|WNOHANG|sysconf|wait[34]",
            ),
        ),
    ),
    Rule(
        "POSIX signals",
        "Windows has no such signal",
        POSIX_ONLY,
        attributes=(
            (
                "signal",
                r"SIG(?:KILL|BUS|SEGV|USR1|USR2|HUP|ALRM|CHLD|QUIT|STOP|CONT|PIPE|TSTP)"
                r"|pthread_kill|pthread_sigmask|setitimer|alarm|sigwait",
            ),
        ),
    ),
    Rule(
        "signal delivery",
        "Windows delivers no signals to a process: os.kill and send_signal end it "
        "(Popen.kill is portable)",
        POSIX_ONLY,
        names="send_signal",
        attributes=(("os", "kill"),),
        absent=frozenset(),
    ),
    Rule("/dev", "device files are POSIX", POSIX_ONLY, text=r"(?<![\w.])/dev/"),
    Rule("valgrind", "valgrind runs on Linux", LINUX_ONLY, text=r"\bvalgrind\b"),
)
