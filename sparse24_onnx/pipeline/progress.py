"""Progress lines that never look stuck: one per layer (at most one a second), the time of a slow layer
when it ends, and a heartbeat while one layer takes long."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..passes.weights import WeightRecord

__all__ = ["HEARTBEAT_SECONDS", "LayerProgress", "PhaseClock"]

log = logging.getLogger("sparse24_onnx")

#: A layer still running after this many seconds gets a "still ..." line, and another every as many more.
HEARTBEAT_SECONDS = 10.0
#: A layer that took at least this long gets a line with its time when it ends.
SLOW_SECONDS = 5.0


class LayerProgress:
    """``progress(done, total, record)`` before each layer, :meth:`finish` after the last.

    Args:
        verb: What is done to each layer (``pruning``, ``pruning for the sensitivity search``).
        heartbeat: Seconds between "still ..." lines while one layer runs.
        detail: Says what the layer is on now (a candidate, the final solve), for the "still ..." lines.
    """

    def __init__(
        self, verb: str = "pruning", heartbeat: float = HEARTBEAT_SECONDS, detail: Callable[[], str] | None = None
    ) -> None:
        self.verb = verb
        self.heartbeat = heartbeat
        self.detail = detail
        self.last_line = 0.0
        self.current: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, done: int, total: int, record: WeightRecord) -> None:
        self._end_layer()
        now = time.monotonic()
        if now - self.last_line >= 1.0 or done == 0:
            self.last_line = now
            shape = "x".join(map(str, record.shape))
            log.info("%s %d/%d: %s (%s)", self.verb, done + 1, total, record.name, shape)
        self.current = (record.name, now)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(record.name, now, self._stop), daemon=True)
        self._thread.start()

    def _beat(self, name: str, started: float, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            doing = self.detail() if self.detail is not None else ""
            log.info(
                "still %s %s (%.0f s so far%s)", self.verb, name, time.monotonic() - started, f"; {doing}" * bool(doing)
            )

    def _end_layer(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.current is not None:
            name, started = self.current
            took = time.monotonic() - started
            if took >= SLOW_SECONDS:
                log.info("%s %s took %.1f s", self.verb, name, took)
            self.current = None

    def finish(self) -> None:
        """End the last layer (its time, if slow) and stop the heartbeat."""
        self._end_layer()


class PhaseClock:
    """Wall time per phase of a run (loading, capture, pruning, validation ...), for the last line and the
    report: :meth:`lap` charges the time since the previous lap to a phase."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now

    def line(self) -> str:
        """``done in 3.2 s (load 0.1 s, capture 0.3 s, ...)``; phases under 0.05 s left out."""
        total = sum(self.seconds.values())
        shown = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.seconds.items() if seconds >= 0.05)
        return f"done in {total:.1f} s" + (f" ({shown})" if shown else "")
