"""Malicious pickle payloads for the tests that check checkpoints are never unpickled with code: each object,
unpickled, creates a marker file."""

import builtins
import os


class RunsShell:
    """Unpickling this object runs ``touch marker`` (os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    """Unpickling this object writes ``marker`` from Python (builtins.exec): no shell needed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))
