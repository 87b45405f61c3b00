"""The live server's access-trace recorder: ``time,key`` CSV lines, bounded and cheap per request.

The tuner reads these files back with :func:`tuning.traces.read_trace`; the recorder lives here, with
the server, so the server process never imports the tuner.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

# A 64 MiB cap holds roughly two million "time,key" lines of a typical key.
RECORDER_MAX_BYTES = 64 * 1024 * 1024
# Lines held in memory between writes: one write() per this many sampled requests.
RECORDER_BUFFER_LINES = 4096
# The column names tuning.traces.read_trace looks for by default.
RECORDER_HEADER = b"time,key\n"
# Sampling compares a 32-bit CRC of the key against rate * 2**32.
_HASH_SPACE = 1 << 32
# Fields that need CSV quoting: separators, quotes, line breaks, and leading blanks (which the
# reader skips as padding).
_CSV_SPECIAL = re.compile(r'[,"\r\n]|^\s')


class TraceRecorder:
    """Appends ``time,key`` lines for the live server, bounded in size and cheap per request.

    Sampling is by key (a CRC32 of the key against ``sample_rate``), not by request: a sampled
    key keeps all of its requests, so its reuse pattern survives and the miss ratio of the sample
    at cache size ``C * sample_rate`` estimates the full traffic at ``C`` (spatial sampling, as in
    SHARDS). Lines are buffered in memory and written every ``buffer_lines`` records, so a request
    costs no system call. Once the file would exceed ``max_bytes`` the recorder stops (``full``).
    The file is replaced, not appended to. Not thread-safe: call it from the event loop.

    Example::

        recorder = TraceRecorder("trace.csv", sample_rate=0.25, max_bytes=16 * 2**20)
        recorder.record("17:42")          # timestamp from time.time()
        recorder.close()
        read_trace("trace.csv")           # reads it back, with times
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sample_rate: float = 1.0,
        max_bytes: int = RECORDER_MAX_BYTES,
        buffer_lines: int = RECORDER_BUFFER_LINES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        if max_bytes < len(RECORDER_HEADER):
            raise ValueError(f"max_bytes must be at least {len(RECORDER_HEADER)} (the header), got {max_bytes}")
        if buffer_lines < 1:
            raise ValueError(f"buffer_lines must be >= 1, got {buffer_lines}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self._threshold = int(sample_rate * _HASH_SPACE)
        self._buffer_lines = buffer_lines
        self._clock = clock
        self._pending: list[bytes] = []
        # Our own list is the buffer, so the file itself is unbuffered: one write() per flush.
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self._file.write(RECORDER_HEADER)
        self._size = len(RECORDER_HEADER)
        self.recorded = 0
        self.full = False

    def record(self, key: str, timestamp: float | None = None) -> None:
        """Record one request of ``key`` (at ``timestamp`` seconds, default now) if sampled."""
        if self._file.closed:
            raise ValueError(f"TraceRecorder for {self.path} is closed")
        if self.full or not self.sampled(key):
            return
        stamp = self._clock() if timestamp is None else timestamp
        line = f"{stamp:.6f},{_csv_field(key)}\n".encode()
        if self._size + len(line) > self.max_bytes:
            self.full = True
            return
        self._pending.append(line)
        self._size += len(line)
        self.recorded += 1
        if len(self._pending) >= self._buffer_lines:
            self.flush()

    def sampled(self, key: str) -> bool:
        """Whether ``key`` is in the sample (the same answer for every request of the key)."""
        return self._threshold >= _HASH_SPACE or zlib.crc32(key.encode()) < self._threshold

    def flush(self) -> None:
        """Write buffered lines to the file."""
        if self._pending:
            self._file.write(b"".join(self._pending))
            self._pending.clear()

    def close(self) -> None:
        """Flush and close; further :meth:`record` calls raise ``ValueError``."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _csv_field(key: str) -> str:
    """``key`` quoted as CSV needs it (keys rarely contain commas or quotes, so check first)."""
    if _CSV_SPECIAL.search(key) is None:
        return key
    return '"' + key.replace('"', '""') + '"'
