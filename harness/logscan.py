"""What a worker logged without raising it to the task's caller.

Responsibility: count known patterns in a worker log (errors while the pool
terminates a connection, coroutines never awaited, lost worker processes), so a
variant that "passes" while the worker is quietly unhappy says so.
"""

from __future__ import annotations

import re

LOG_PATTERNS: dict[str, re.Pattern[str]] = {
    "never-awaited": re.compile(r"RuntimeWarning: coroutine .* was never awaited"),
    "exception-terminating-connection": re.compile(r"Exception terminating connection"),
    "exception-during-reset": re.compile(r"Exception during reset or similar"),
    "task-exception-never-retrieved": re.compile(r"Task exception was never retrieved"),
    "unclosed-connection": re.compile(
        r"garbage collector is trying to clean up non-checked-in connection"),
    "worker-lost": re.compile(r"WorkerLostError|Process '.*' pid:\d+ exited with"),
    "hard-time-limit": re.compile(r"Hard time limit .* exceeded"),
    "traceback": re.compile(r"^Traceback \(most recent call last\)", re.MULTILINE),
}


def scan(text: str) -> dict[str, int]:
    """Count each pattern; patterns that never occur are left out."""
    found = {name: len(pattern.findall(text)) for name, pattern in LOG_PATTERNS.items()}
    return {name: count for name, count in found.items() if count}
