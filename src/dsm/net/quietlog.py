"""Logging what strangers send: at most one line per interval per reason, and never their bytes raw.

Anyone who reaches a node's peer or HTTP port can make it refuse something (a bad handshake, an
unparseable request) as fast as it can open connections. Each refusal is counted in the metrics, always;
the log gets at most one line per `interval_s` per reason, and the next line after a quiet stretch says how
many were not logged since the previous one. A flood then costs the log a few lines, not one per
connection, while an operator still sees that it happened, why, and how much of it (the counters).

Whatever part of such a line comes from the other side (a claimed node id, a refusal's detail, a parser's
complaint quoting the request) goes through `escape`: a newline or other control character in it could
otherwise start a forged log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds between two lines of one reason.
INTERVAL_S = 10.0
#: Most reasons remembered; the reasons are the code's own labels, this only bounds a mistake.
REASONS_MAX = 256


def escape(text: object) -> str:
    """`text` as it is when it is printable, else its repr (quotes and backslash escapes): one log line,
    whatever it holds."""
    value = str(text)
    return value if value.isprintable() else repr(value)


class QuietLog:
    """A logger's lines about one kind of event, at most one per `interval_s` per reason.

    Args:
        logger: where the lines go.
        interval_s: least seconds between two lines of one reason.
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(
        self, logger: logging.Logger, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        #: reason -> (when its last line was logged, events not logged since).
        self._reasons: dict[str, tuple[float, int]] = {}

    def log(self, level: int, reason: str, message: str, *args: object) -> bool:
        """Logs `message % args` unless a line of `reason` was logged less than `interval_s` ago (then it is
        only counted, and told with the next line). Returns whether it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        last = self._reasons.get(reason)
        if last is not None and now - last[0] < self.interval_s:
            self._reasons[reason] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._reasons) >= REASONS_MAX:
            self._reasons.clear()
        self._reasons[reason] = (now, 0)
        if last is not None and last[1]:
            message += " (%d more of these since the last one logged, %.0f s ago)"
            args = (*args, last[1], now - last[0])
        self.logger.log(level, message, *args)
        return True
