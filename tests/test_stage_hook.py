"""The swap's stage hook (`morph3d.swap.stages`): a real short swap seen through a recording
hook reports every stage, in order, on the thread that ran it; a failure inside a stage
still ends it, and a swap that fails while encoding leaves no output behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from morph3d.swap.stages import PER_FRAME, each, stage

FRAMES = 4


class Recorder:
    """Every start and end, with the thread it came from."""

    def __init__(self, fail_at: tuple[str, int] | None = None) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.fail_at = fail_at
        self._lock = threading.Lock()

    def start(self, name: str) -> None:
        with self._lock:
            self.events.append(("start", name, threading.current_thread().name))
            if self.fail_at is not None:
                count = sum(1 for e in self.events if e[:2] == ("start", self.fail_at[0]))
                if count == self.fail_at[1]:
                    raise RuntimeError(f"failed in {name} {count}")

    def end(self, name: str) -> None:
        with self._lock:
            self.events.append(("end", name, threading.current_thread().name))

    def starts(self, name: str) -> list[str]:
        """The threads of every start of `name`."""
        return [thread for event, n, thread in self.events if event == "start" and n == name]


def test_stage_ends_when_the_body_fails() -> None:
    hook = Recorder()
    with pytest.raises(ValueError):
        with stage(hook, "fit clip"):
            raise ValueError("bad")
    assert hook.events == [("start", "fit clip", threading.current_thread().name),
                           ("end", "fit clip", threading.current_thread().name)]
    assert list(each(hook, "decode", [1, 2])) == [1, 2]
    assert [e[:2] for e in hook.events[2:]] == [("start", "decode"), ("end", "decode")] * 3
    assert list(each(None, "decode", [3])) == [3]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hook_work")


@pytest.mark.media
@pytest.mark.slow
def test_hook_sees_every_stage_in_order(media_dir: Path, work: Path, tmp_path: Path) -> None:
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    hook = Recorder()
    output = tmp_path / "out.mp4"
    options = SwapOptions(work_dir=work, max_frames=FRAMES, quiet=True)
    summary = swap([media_dir / "mark.jpg"], media_dir / "orig.webm", output, options,
                   hook=hook)
    assert summary.frames == FRAMES and output.is_file()
    once = [(event, name) for event, name, _ in hook.events if name not in PER_FRAME]
    assert once == [(event, name) for name in ("landmarks", "fit clip", "fit source",
                                               "prepare", "finish")
                    for event in ("start", "end")]
    main = threading.main_thread().name
    # decode: once more than the frames (the last call finds the end of the clip)
    assert hook.starts("decode") == [main] * (FRAMES + 1)
    assert hook.starts("composite") == hook.starts("encode") == [main] * FRAMES
    render = hook.starts("render")
    assert len(render) == FRAMES and main not in render  # the render-ahead thread
    for name in PER_FRAME:  # every start ended
        ends = [e for e in hook.events if e[:2] == ("end", name)]
        assert len(ends) == len(hook.starts(name)), name
    # The stages ran in order: the per-frame work between "prepare" and "finish".
    names = [name for _, name, _ in hook.events]
    assert names.index("prepare") < names.index("decode")
    assert max(i for i, n in enumerate(names) if n in PER_FRAME) < names.index("finish")


@pytest.mark.media
@pytest.mark.slow
def test_failure_while_encoding_leaves_no_output(media_dir: Path, work: Path,
                                                 tmp_path: Path) -> None:
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    hook = Recorder(fail_at=("encode", 2))
    output = tmp_path / "out.mp4"
    options = SwapOptions(work_dir=work, max_frames=FRAMES, quiet=True)
    with pytest.raises(RuntimeError, match="failed in encode 2"):
        swap([media_dir / "mark.jpg"], media_dir / "orig.webm", output, options, hook=hook)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the writer's temporary
    assert "finish" not in [name for _, name, _ in hook.events]


class ThreadCounts(Recorder):
    """At every stage's start: OpenCV's, torch's and each BLAS library's thread counts."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[tuple[str, int, int, tuple[int, ...]]] = []

    def start(self, name: str) -> None:
        import cv2
        import torch
        from threadpoolctl import threadpool_info

        blas = tuple(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas")
        self.counts.append((name, cv2.getNumThreads(), torch.get_num_threads(), blas))


@pytest.mark.media
@pytest.mark.slow
def test_every_stage_runs_with_one_thread_per_pool(media_dir: Path, work: Path,
                                                    tmp_path: Path) -> None:
    """Worker pools only spin against the swap's own two threads: torch, OpenCV and every
    BLAS library run one thread during every stage, and get their counts back after."""
    import cv2
    import torch
    from threadpoolctl import threadpool_info

    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    def counts() -> tuple[int, int, tuple[int, ...]]:
        return (cv2.getNumThreads(), torch.get_num_threads(),
                tuple(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"))

    before = counts()
    hook = ThreadCounts()
    options = SwapOptions(work_dir=work, max_frames=FRAMES, quiet=True)
    swap([media_dir / "mark.jpg"], media_dir / "orig.webm", tmp_path / "out.mp4", options,
         hook=hook)
    assert {name for name, *_ in hook.counts} >= {"fit source", "landmarks", "render"}
    for name, cv_threads, torch_threads, blas in hook.counts:
        assert (cv_threads, torch_threads) == (1, 1) and set(blas) == {1}, name
    assert counts()[:2] == before[:2]
    assert all(n > 1 for n in counts()[2]) == all(n > 1 for n in before[2])
