"""The swap's stage hook: how a benchmark or a profiler sees the driver's stages (their times,
memory, threads) without patching the driver.

`morph3d.swap.driver.swap(..., hook=...)` calls `hook.start(name)` before and `hook.end(name)`
after every stage, on the thread that runs the stage, `end` also when the stage fails. The
hook is for tools, not users: no option or manifest names it.

Once per swap, in order: "landmarks", "fit clip" (both skipped for a clip template; with
target face "all" once for every person together), "fit source" (about each person's
identity, all in one stage), "prepare" (the renderers and compositors). Then per frame
(`PER_FRAME`): "decode" and "composite" and "encode" on the calling thread, "render" (every
face of the frame) on the render-ahead thread, so a frame's "render" may start before the
previous frame's "composite" ends; "decode" runs once more than the frames (the last call
finds the end of the clip). Last, once, "finish" (the video encoder's flush and the move
into place; a still image has no "finish").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

T = TypeVar("T")

PER_FRAME = ("decode", "render", "composite", "encode")


class StageHook(Protocol):
    def start(self, stage: str) -> None: ...

    def end(self, stage: str) -> None: ...


@contextmanager
def stage(hook: StageHook | None, name: str) -> Iterator[None]:
    """Run the body as stage `name` of `hook` (nothing when there is no hook)."""
    if hook is None:
        yield
        return
    hook.start(name)
    try:
        yield
    finally:
        hook.end(name)


def each(hook: StageHook | None, name: str, items: Iterable[T]) -> Iterator[T]:
    """`items`, each one's production (its `next`) run as stage `name`."""
    if hook is None:
        yield from items
        return
    iterator = iter(items)
    while True:
        with stage(hook, name):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
