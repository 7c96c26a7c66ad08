"""systemd's notify protocol (sd_notify), spoken by the detector itself.

READY=1 once the model is loaded and the probes serve; WATCHDOG=1 from the loop, so a
hung loop stops the pings and systemd restarts the service; STOPPING=1 on shutdown.
Silent when NOTIFY_SOCKET is not set (not under systemd).
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None):
        self.address = address
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self.interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping = 0.0
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._target = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_env(cls) -> Notifier:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = None  # the watchdog is meant for another process
        return cls(os.environ.get("NOTIFY_SOCKET"), int(usec) if usec and usec.isdigit() else None)

    def send(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
        except OSError as e:  # systemd gone or socket full: never fatal for the detector
            log.debug("sd_notify failed: %s", e)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self) -> None:
        """Called by the loop on every iteration; pings at most every interval."""
        if self.interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.interval_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
