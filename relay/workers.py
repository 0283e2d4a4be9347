"""Helpers for worker processes (photo sanitising, mail parsing) of the relay."""

from __future__ import annotations

import os
import select
import threading
import time


def exit_with(pid: int) -> None:
    """A worker blocks on its call queue, whose write end its siblings also hold: it would
    outlive a killed relay forever. A pidfd (Linux 5.3) becomes readable when ``pid``
    terminates; elsewhere, poll once a second."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
        os._exit(0)

    threading.Thread(target=watch, name="relay-watch", daemon=True).start()
