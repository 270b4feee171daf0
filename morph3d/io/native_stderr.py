"""Native libraries' start-up chatter, kept off the terminal.

mediapipe's graphs (TFLite, absl logging) write straight to file descriptor 2 while they
start: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", absl's "W0000 ...
inference_feedback_manager" lines. Python's logging and warnings filters never see them,
and neither GLOG_minloglevel nor TF_CPP_MIN_LOG_LEVEL reaches absl's or TFLite's own
logger, so the only switch left is the descriptor itself: `native_stderr_captured`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block.

    If the block raises, the captured text is written to the real stderr before the
    exception propagates, so a native library's own account of a failure is not lost;
    otherwise it is dropped. Whatever other threads write to stderr meanwhile is captured
    too, so keep the block to short initialisation calls.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            except BaseException:
                _flush_quietly()
                os.dup2(saved, 2)
                capture.seek(0)
                _write_all(2, capture.read())
                raise
            finally:
                _flush_quietly()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _flush_quietly() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data):]
