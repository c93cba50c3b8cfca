"""Which tests can run on which OS, read from their source with ``ast``.

``rules`` lists what some OS lacks (procfs, ``os.fork``, ``RLIMIT_AS``, …); ``conditions``
evaluates a guard's condition as it would come out on Linux, macOS and Windows; ``checker``
finds every use of a rule's names in the test modules and the guard each stands under;
``table`` writes ``specs/platforms.md`` from the same reading. Run
``python -m tests.portability`` to list unguarded uses, ``--write`` to regenerate the table.
"""
