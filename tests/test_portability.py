"""Every test can run on Linux, macOS and Windows, or is skipped where it cannot, with a reason.

The check reads the test modules with ``ast`` (``tests/portability``): a use of something an
OS lacks must sit under a guard that skips it there. The checker is itself checked here on
small made-up modules, each guard evaluated as it would come out on each OS.
"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT
from tests.portability.checker import check, check_source
from tests.portability.conditions import UNKNOWN, Scope, evaluate
from tests.portability.rules import PLATFORMS
from tests.portability.table import TABLE, render


def test_no_test_uses_what_an_os_lacks_without_a_guard() -> None:
    violations = [str(v) for report in check(ROOT) for v in report.violations]
    assert not violations, "\n".join(violations)


def test_the_platform_table_is_up_to_date() -> None:
    expected = render(check(ROOT))
    assert (ROOT / TABLE).read_text() == expected, (
        f"{TABLE} is out of date: run `python -m tests.portability --write`"
    )


# -- the checker on made-up modules ------------------------------------------------------------


def unguarded(source: str) -> dict[str, set[str]]:
    """Per test (or ``import``), the platforms its unguarded uses would fail on."""
    found: dict[str, set[str]] = {}
    for violation in check_source(source).violations:
        found.setdefault(violation.test or "import", set()).update(violation.platforms)
    return found


def test_a_proc_read_without_a_guard_is_found() -> None:
    source = """
        def test_reads_maps():
            with open("/proc/self/maps") as maps:
                assert maps.read()
    """
    assert unguarded(source) == {"test_reads_maps": {"darwin", "win32"}}


@pytest.mark.parametrize(
    "guard",
    [
        "@markers.procfs",
        '@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs")',
        '@pytest.mark.skipif(sys.platform != "linux", reason="procfs")',
        '@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="procfs")',
        '@pytest.mark.skipif(platform.system() != "Linux", reason="procfs")',
        '@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="procfs")',
    ],
)
def test_a_proc_read_under_a_linux_guard_passes(guard: str) -> None:
    source = f"""
        import os, platform, sys
        import pytest
        from tests import markers

        {guard}
        def test_reads_maps():
            open("/proc/self/maps").read()
    """
    assert unguarded(source) == {}


def test_a_guard_must_cover_every_os_that_lacks_the_thing() -> None:
    source = """
        from tests import markers

        @markers.needs_fork
        def test_reads_maps():
            open("/proc/self/status").read()
    """
    assert unguarded(source) == {"test_reads_maps": {"darwin"}}


def test_inline_guards_and_early_skips_count() -> None:
    source = """
        import os, sys
        import pytest

        def test_inline():
            if sys.platform.startswith("linux"):
                open("/proc/self/maps").read()
            kill = os.killpg if hasattr(os, "killpg") else None

        def test_early_skip():
            if os.name != "posix":
                pytest.skip("POSIX")
            os.mkfifo("f")

        def test_short_circuit():
            return hasattr(os, "geteuid") and os.geteuid() == 0

        def test_wrong_branch():
            if sys.platform == "win32":
                os.fork()
    """
    assert unguarded(source) == {"test_wrong_branch": {"win32"}}


def test_helpers_fixtures_and_scripts_count_for_the_tests_that_use_them() -> None:
    source = '''
        import pytest
        from tests import markers
        from tests.conftest import run_python

        SCRIPT = """
        import os
        if os.fork() == 0:
            os._exit(0)
        """

        def status():
            return open("/proc/self/status").read()

        @pytest.fixture
        def rss():
            return status()

        def test_through_a_fixture(rss):
            pass

        @markers.procfs
        def test_guarded_helper():
            status()

        def test_a_script():
            run_python(SCRIPT)

        @markers.needs_fork
        def test_a_guarded_script():
            run_python(SCRIPT)

        def test_a_script_that_guards_itself():
            run_python("""
                import signal, threading
                if hasattr(signal, "pthread_kill"):
                    signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            """)
    '''
    assert unguarded(source) == {
        "test_through_a_fixture": {"darwin", "win32"},
        "test_a_script": {"win32"},
    }


def test_what_runs_at_import_needs_more_than_pytestmark() -> None:
    source = """
        import mmap, sys
        import pytest

        pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux")
        POPULATE = mmap.MAP_POPULATE

        def test_maps():
            open("/proc/self/maps")
    """
    assert unguarded(source) == {"import": {"darwin", "win32"}}
    fixed = """
        import sys
        import pytest

        if not sys.platform.startswith("linux"):
            pytest.skip("Linux's mmap flags", allow_module_level=True)
        import mmap
        POPULATE = mmap.MAP_POPULATE
    """
    assert unguarded(fixed) == {}


def test_names_that_only_look_alike_are_not_uses() -> None:
    source = '''
        import signal, subprocess

        def test_prose():
            """Nothing from /proc, RLIMIT_AS or os.fork runs here: this is a docstring."""
            signal.signal(signal.SIGINT, signal.default_int_handler)
            subprocess.Popen(["true"]).kill()
    '''
    assert unguarded(source) == {}


@pytest.mark.parametrize(
    ("line", "platforms"),
    [
        ("resource.setrlimit(resource.RLIMIT_AS, (1, 1))", {"darwin", "win32"}),
        ("os.kill(pid, signal.SIGKILL)", {"win32"}),
        ("assert code == -signal.SIGSEGV", {"win32"}),
        ("child.send_signal(signal.SIGINT)", {"win32"}),
        ('multiprocessing.get_context("fork")', {"win32"}),
        ("mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE)", {"win32"}),
        ("libc.mlockall(2)", {"darwin", "win32"}),
        ('assert "vm.max_map_count" in message', {"darwin", "win32"}),
        ('open("/dev/zero", "rb")', {"win32"}),
        ("from tests.osprobe.linux import exhaust_mappings", {"darwin", "win32"}),
        ("from tests.osprobe import mapping_count", set()),
    ],
)
def test_each_rule_names_the_oses_it_fails_on(line: str, platforms: set[str]) -> None:
    source = f"""
        import mmap, multiprocessing, os, resource, signal

        def test_it(pid, child, code, message, libc):
            {line}
    """
    found = unguarded(source)
    found.pop("import", None)  # the module's own ``import resource``
    assert found == ({"test_it": platforms} if platforms else {})


# -- conditions, as each OS would see them ------------------------------------------------------


def outcomes(expression: str) -> dict[str, object]:
    tree = ast.parse(f"import os, platform, sys\nvalue = {expression}\n")
    scope = Scope(tree, lambda name: None)
    return {p: evaluate(scope.assignments["value"], scope, p) for p in PLATFORMS}


@pytest.mark.parametrize(
    ("expression", "linux", "darwin", "win32"),
    [
        ('sys.platform.startswith("linux")', True, False, False),
        ('sys.platform == "win32"', False, False, True),
        ('os.name != "posix"', False, False, True),
        ('hasattr(os, "fork")', True, True, False),
        ('not hasattr(os, "mkfifo")', False, False, True),
        ('platform.system() == "Darwin"', False, True, False),
        ('os.path.exists("/dev/zero")', True, True, False),
        ('sys.platform == "win32" or os.geteuid() != 0', UNKNOWN, UNKNOWN, True),
        ('sys.platform == "win32" and os.geteuid() != 0', False, False, UNKNOWN),
        ("os.geteuid() == 0", UNKNOWN, UNKNOWN, UNKNOWN),
    ],
)
def test_conditions_come_out_per_os(
    expression: str, linux: object, darwin: object, win32: object
) -> None:
    assert outcomes(expression) == {"linux": linux, "darwin": darwin, "win32": win32}
