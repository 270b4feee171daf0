"""Face identities over time: which face in each frame is which person.

`FaceTracker` links each frame's faces to tracks by box overlap (IoU against the track's
predicted box) and uses dlib's 128-D identity embedding where overlap cannot decide: when
a face could belong to more than one track, when a face appears with no overlapping track
(re-identification after an occlusion, a cut or a detector miss), and every `embed_every`
frames per track (`embed_every_alone` for a face alone in the picture, once its identity
has settled) to keep an identity model. Embeddings cost ~80 ms per face on this CPU, so
they are computed sparsely, never for every face of every frame.

The result is a `Tracks` value (flat numpy arrays, one row per detected face, with save/load
to .npz). Choosing one person among the tracks (the largest over the clip, the Nth, the
one nearest a reference photo) is `fitting.people`'s job.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from fitting.choice import CHOOSER_BACKEND
from fitting.detection import get_landmark_backend
from fitting.embedding import (
    EMBEDDING_SIZE,
    SAME_PERSON_THRESHOLD,
    embedding_distance,
    face_embeddings,
)
from fitting.faces import (
    IBUG68,
    SCHEME_SIZES,
    FrameFaces,
    LandmarkBackend,
    _open_npz,
    as_rgb_uint8,
    box_areas,
    box_iou,
    save_npz_atomic,
)
from morph3d.errors import InputError
from morph3d.io.media import VideoPicture

FORMAT_VERSION = 1
CHANGE_IMAGES = "fitting.track.change_images"  # a VideoPicture's note: its `change_images`
_BLOCK_ROWS = 64  # rows copied at a time where a whole copy would only be a temporary


@dataclass
class Tracks:
    """Every detected face of a clip with its track id; one row per (frame, face).

    n_frames: frames in the clip (frames with no face have no rows).
    image_size: (H, W) in pixels.
    frame_index: (M,) int64 frame of each row, non-decreasing.
    track_id: (M,) int64 track of each row; ids are 0, 1, 2... in order of first appearance.
    boxes: (M, 4) float32, scores: (M,) float32, landmarks: scheme -> (M, L, 2) float32, as
        in `fitting.faces.FrameFaces`.
    embeddings: (M, 128) float32 identity descriptors, NaN rows where none was computed.
    scene_cut: (n_frames,) bool, True where a frame starts a new shot (a cut seen by the
        tracker): temporal smoothing and priors should not reach across it.
    repeated: (n_frames,) bool, True where a frame repeats the previous one (the duplicates
        a frame-rate conversion inserts, e.g. every 6th frame from 25 to 30 fps): the face
        did not move there, so smoothing must not spread the motion over it.
    """

    n_frames: int
    image_size: tuple[int, int]
    frame_index: np.ndarray
    track_id: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: dict[str, np.ndarray]
    embeddings: np.ndarray
    scene_cut: np.ndarray | None = None
    repeated: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.n_frames = int(self.n_frames)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.frame_index = np.asarray(self.frame_index, np.int64).reshape(-1)
        m = len(self.frame_index)
        self.track_id = np.asarray(self.track_id, np.int64).reshape(m)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(m, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(m)
        self.landmarks = {s: _points_array(s, p, m) for s, p in self.landmarks.items()}
        self.embeddings = np.asarray(self.embeddings, np.float32).reshape(m, EMBEDDING_SIZE)
        self.scene_cut = (np.zeros(self.n_frames, bool) if self.scene_cut is None
                          else np.asarray(self.scene_cut, bool).reshape(self.n_frames))
        self.repeated = (np.zeros(self.n_frames, bool) if self.repeated is None
                         else np.asarray(self.repeated, bool).reshape(self.n_frames))
        if m and (self.frame_index.min() < 0 or self.frame_index.max() >= self.n_frames):
            raise InputError("track frame indices fall outside the clip")
        if np.any(np.diff(self.frame_index) < 0):
            raise InputError("track rows must be in frame order")

    def __len__(self) -> int:
        return len(self.frame_index)

    @property
    def ids(self) -> np.ndarray:
        """Sorted unique track ids."""
        return np.unique(self.track_id)

    def rows_in_frame(self, frame: int) -> np.ndarray:
        """Row indices of the faces in `frame`."""
        lo, hi = np.searchsorted(self.frame_index, [frame, frame + 1])
        return np.arange(lo, hi)

    def ids_in_frame(self, frame: int) -> np.ndarray:
        """Track id of each face in `frame` (in detection order)."""
        return self.track_id[self.rows_in_frame(frame)]

    def frame_faces(self, frame: int) -> FrameFaces:
        """The faces of one frame as a FrameFaces (rows in the order of `ids_in_frame`)."""
        rows = self.rows_in_frame(frame)
        return FrameFaces(boxes=self.boxes[rows], scores=self.scores[rows],
                          landmarks={s: p[rows] for s, p in self.landmarks.items()},
                          image_size=self.image_size)

    def present(self, track_id: int) -> np.ndarray:
        """(n_frames,) bool: frames where the track has a face."""
        mask = np.zeros(self.n_frames, bool)
        mask[self.frame_index[self.track_id == track_id]] = True
        return mask

    def _per_frame(self, track_id: int, values: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(self.track_id == track_id)
        out = np.full((self.n_frames,) + values.shape[1:], np.nan, np.float32)
        # If a track had two faces in one frame (it cannot, by construction) the last wins.
        # A block of rows at a time: `values[rows]` at once would be a second copy of them.
        for start in range(0, len(rows), _BLOCK_ROWS):
            block = rows[start:start + _BLOCK_ROWS]
            out[self.frame_index[block]] = values[block]
        return out

    def trajectory(self, track_id: int, scheme: str = IBUG68) -> np.ndarray:
        """(n_frames, L, 2) landmarks of one track, NaN in frames where it is absent."""
        if scheme not in self.landmarks:
            raise InputError(f"no {scheme} landmarks in these tracks "
                             f"(have {', '.join(self.landmarks) or 'none'})")
        return self._per_frame(track_id, self.landmarks[scheme])

    def track_boxes(self, track_id: int) -> np.ndarray:
        """(n_frames, 4) boxes of one track, NaN where absent."""
        return self._per_frame(track_id, self.boxes)

    def track_embeddings(self, track_id: int) -> np.ndarray:
        """(K, 128) the embeddings computed for one track (may be empty)."""
        rows = self.track_id == track_id
        embeddings = self.embeddings[rows]
        return embeddings[np.all(np.isfinite(embeddings), axis=1)]

    def mean_areas(self) -> dict[int, float]:
        """Track id -> box area summed over its frames / n_frames (absent frames count 0, so
        a face seen briefly does not outrank one seen throughout)."""
        areas = box_areas(self.boxes)
        return {int(t): float(areas[self.track_id == t].sum() / max(self.n_frames, 1))
                for t in self.ids}

    def with_landmarks(self, landmarks: dict[str, np.ndarray]) -> Tracks:
        """The same rows with some landmark sets replaced (e.g. smoothed). The other arrays
        are shared, not copied: a clip's tracks are several kilobytes per frame, and no
        code modifies a Tracks' arrays in place."""
        merged = dict(self.landmarks)
        merged.update(landmarks)
        return Tracks(self.n_frames, self.image_size, self.frame_index, self.track_id,
                      self.boxes, self.scores, merged, self.embeddings, self.scene_cut,
                      self.repeated)

    def save(self, path: str | os.PathLike) -> None:
        """Write an npz atomically."""
        arrays = {
            "format_version": np.array(FORMAT_VERSION),
            "n_frames": np.array(self.n_frames, np.int64),
            "image_size": np.array(self.image_size, np.int64),
            "frame_index": self.frame_index, "track_id": self.track_id,
            "boxes": self.boxes, "scores": self.scores, "embeddings": self.embeddings,
            "scene_cut": self.scene_cut, "repeated": self.repeated,
        }
        arrays.update({f"landmarks/{s}": p for s, p in self.landmarks.items()})
        save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tracks:
        """Read a file written by `save`; a missing or foreign file raises InputError."""
        with _open_npz(path) as z:
            if "track_id" not in z.files or int(z.get("format_version", -1)) != FORMAT_VERSION:
                raise InputError(f"{path} is not a tracks file of format {FORMAT_VERSION}")
            return cls(
                n_frames=int(z["n_frames"]), image_size=tuple(z["image_size"]),
                frame_index=z["frame_index"], track_id=z["track_id"], boxes=z["boxes"],
                scores=z["scores"], embeddings=z["embeddings"], scene_cut=z["scene_cut"],
                repeated=z["repeated"] if "repeated" in z.files else None,
                landmarks={k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("landmarks/")},
            )


def _points_array(scheme: str, points: object, rows: int) -> np.ndarray:
    """(rows, L, 2) float32; L from the data, or from the scheme when there are no rows."""
    points = np.asarray(points, np.float32)
    if rows == 0:
        size = SCHEME_SIZES.get(scheme, points.shape[1] if points.ndim == 3 else 0)
        return np.zeros((0, size, 2), np.float32)
    return points.reshape(rows, -1, 2)


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------


class _Columns:
    """Rows appended to one growing array per field (the tracker's detections, several
    kilobytes per face): no Python objects per row, and the arrays are handed out as they
    are, not copied. A full array is enlarged in place by an eighth (numpy's resize
    reallocates: big arrays move without a second copy) and trimmed in place when handed
    out; after that, the next enlargement copies, so the arrays handed out never change."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self.count = 0
        self._handed_out = False

    def append(self, values: dict[str, np.ndarray]) -> None:
        """Append the rows of `values` (equal lengths; the same keys, row shapes and dtypes
        at every call)."""
        n = len(next(iter(values.values())))
        if not n:
            return
        if not self._arrays:
            self._arrays = {k: np.empty((max(n, 64), *v.shape[1:]), v.dtype)
                            for k, v in values.items()}
        capacity = len(next(iter(self._arrays.values())))
        if self.count + n > capacity:
            self._resize(max(self.count + n, capacity + capacity // 8))
        for key, value in values.items():
            self._arrays[key][self.count:self.count + n] = value
        self.count += n

    def _resize(self, capacity: int) -> None:
        for key, array in self._arrays.items():
            if self._handed_out:
                grown = np.empty((capacity, *array.shape[1:]), array.dtype)
                grown[:self.count] = array[:self.count]
                self._arrays[key] = grown
            else:  # no view of the array exists: it is private until handed out
                array.resize((capacity, *array.shape[1:]), refcheck=False)
        self._handed_out = False

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows so far, by field (none before the first row); later appends leave the
        returned arrays as they are."""
        if self._arrays and not self._handed_out:
            self._resize(self.count)
        self._handed_out = True
        return dict(self._arrays)


@dataclass
class _TrackState:
    track_id: int
    last_frame: int
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    embedding_sum: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_SIZE))
    embedding_count: int = 0
    last_embedding_frame: int = -(10**9)

    @property
    def identity(self) -> np.ndarray | None:
        return self.embedding_sum / self.embedding_count if self.embedding_count else None

    def predicted_box(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.last_frame)

    def add_embedding(self, embedding: np.ndarray, frame: int) -> None:
        self.embedding_sum += embedding
        self.embedding_count += 1
        self.last_embedding_frame = frame


class GreyBuffers:
    """Whole-frame arrays that `frame_grey` reuses from frame to frame: a fresh array per
    frame costs the kernel's zeroed pages, several times what the sums themselves cost."""

    def __init__(self) -> None:
        self.planes: list[np.ndarray] = []
        self.grey = np.empty((0, 0), np.float32)

    def fit(self, height: int, width: int) -> None:
        if self.grey.shape != (height, width):
            self.planes = [np.empty((height, width), np.uint8) for _ in range(3)]
            self.grey = np.empty((height, width), np.float32)


def frame_grey(image: np.ndarray, buffers: GreyBuffers | None = None) -> np.ndarray:
    """(H, W) float32 mean of an image's R, G and B: the same array as
    ``as_rgb_uint8(image).mean(axis=2, dtype=np.float32)``, bit for bit (a sum of three bytes
    is exact in float32, and the one division rounds as the mean's does). OpenCV adds the
    planes in one pass each, where numpy's reduction over a 3-long axis or its strided channel
    views cost several times more on a whole video frame. With `buffers` the result is
    `buffers.grey`, overwritten by the next call with the same buffers."""
    rgb = as_rgb_uint8(image)
    buffers = buffers if buffers is not None else GreyBuffers()
    buffers.fit(*rgb.shape[:2])
    red, green, blue = cv2.split(rgb, buffers.planes)
    grey = buffers.grey
    cv2.add(red, green, dst=grey, dtype=cv2.CV_32F)
    cv2.add(grey, blue, dst=grey, dtype=cv2.CV_32F)
    np.divide(grey, 3, out=grey)
    return grey


def change_images(image: np.ndarray | VideoPicture, buffers: GreyBuffers | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The grey pictures `FaceTracker` compares between consecutive frames: the frame's grey
    (`frame_grey`) at a quarter of its size and as a 32 x 32 thumbnail, float32. A
    `VideoPicture`'s come from its fast conversion (`preview`)."""
    if isinstance(image, VideoPicture):
        image = image.preview()
    grey = frame_grey(image, buffers)
    height, width = grey.shape
    small = cv2.resize(grey, (max(width // 4, 1), max(height // 4, 1)),
                       interpolation=cv2.INTER_AREA)
    return small, cv2.resize(small, (32, 32), interpolation=cv2.INTER_AREA)


def with_change_images(frames: Iterable[np.ndarray | VideoPicture]
                       ) -> Iterator[np.ndarray | VideoPicture]:
    """The same frames, each `VideoPicture` with its `change_images` made (in
    ``notes[CHANGE_IMAGES]``) as it passes: in `prefetched`'s reader thread, beside the
    decoding, rather than in the tracker's."""
    buffers = GreyBuffers()
    for frame in frames:
        if isinstance(frame, VideoPicture):
            frame.notes[CHANGE_IMAGES] = change_images(frame, buffers)
        yield frame


def block_difference(a: np.ndarray, b: np.ndarray, block: int = 8) -> float:
    """Largest mean absolute difference over `block` x `block` tiles of two equal-size grey
    images: one moving part (a mouth) shows even when the rest of the frame is still."""
    diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    h, w = diff.shape[0] // block * block, diff.shape[1] // block * block
    if h == 0 or w == 0:
        return float(diff.mean()) if diff.size else 0.0
    tiles = diff[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    edge = [diff[h:].mean()] if h < diff.shape[0] else []
    edge += [diff[:, w:].mean()] if w < diff.shape[1] else []
    return float(max([tiles.max(), *edge]))


class FaceTracker:
    """Online tracker: feed frames and their faces in order with `update`, then `result()`.

    iou_threshold: least IoU between a face and a track's predicted box to link them on
        overlap alone.
    max_gap: frames a track may go unseen and still be linked on overlap; after that only
        its identity embedding can bring it back.
    embed_every: frames between identity embeddings of a tracked face (also computed for every
        new or ambiguous face).
    embed_every_alone: the same for a face that has the frame to itself (no other track seen
        within `max_gap` frames) once its track's identity is the mean of
        `settled_embeddings` embeddings: there a switch the boxes cannot see needs a cut the
        cut test missed as well, and one more embedding moves a settled mean little, so its
        refreshes are sparser (embeddings are most of the tracker's cost). A young identity
        is refreshed every `embed_every` frames: the re-identification after the next cut
        compares against it.
    reid_threshold: largest embedding distance to give an unlinked face an old track's id;
        stricter than dlib's 0.6 so two people are not merged.
    switch_threshold: embedding distance from its track's identity at which a face linked by
        overlap is unlinked at a periodic refresh. Above dlib's 0.6 because one person seen
        in profile can drift past 0.6; at a scene cut 0.6 itself is used.
    cut_threshold: mean absolute difference (0..255) between 32x32 grey thumbnails of
        consecutive frames above which a frame counts as a scene cut; at a cut every face is
        embedded and checked against its track, since boxes say nothing across a cut.
        A dim or flat picture changes less at a cut: there the threshold is `cut_contrast`
        times the thumbnails' contrast (their mean standard deviation), if lower, but not
        under `cut_floor` (a nearly black frame's noise is no cut).
    repeat_threshold: a frame whose every 32 x 32-pixel block differs from the previous
        frame's by at most this mean absolute grey difference (0..255) repeats it. On
        nggyup.mp4 the duplicates differ by at most 1.1, real frames by at least 21 (a
        small mouth movement alone moves a block by several levels).

    An identity switch that the boxes cannot see and that is not at a detected cut is caught
    at the next refresh, so up to `embed_every` frames (`embed_every_alone` for a settled face
    alone in the picture) may carry the wrong id.
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 15, embed_every: int = 15,
                 reid_threshold: float = 0.5, embedding_weight: float = 1.0,
                 switch_threshold: float = 0.7, cut_threshold: float = 30.0,
                 cut_contrast: float = 0.5, cut_floor: float = 6.0,
                 repeat_threshold: float = 2.0, embed_every_alone: int = 30,
                 settled_embeddings: int = 3) -> None:
        self.iou_threshold = float(iou_threshold)
        self.max_gap = int(max_gap)
        self.embed_every = int(embed_every)
        self.embed_every_alone = int(embed_every_alone)
        self.settled_embeddings = int(settled_embeddings)
        self.reid_threshold = float(reid_threshold)
        self.embedding_weight = float(embedding_weight)
        self.switch_threshold = float(switch_threshold)
        self.cut_threshold = float(cut_threshold)
        self.cut_contrast = float(cut_contrast)
        self.cut_floor = float(cut_floor)
        self.repeat_threshold = float(repeat_threshold)
        self._thumbnail: np.ndarray | None = None
        self._small: np.ndarray | None = None  # quarter-size grey frame, for repeats
        self._grey_buffers = GreyBuffers()
        self._states: list[_TrackState] = []
        self._rows = _Columns()
        self._frame = 0
        self._cuts: list[bool] = []
        self._repeats: list[bool] = []
        self._image_size: tuple[int, int] | None = None
        self._schemes: tuple[str, ...] | None = None
        self.embeddings_computed = 0

    def _embed(self, image: np.ndarray | VideoPicture, faces: FrameFaces, indices: list[int]
               ) -> np.ndarray:
        if not indices:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        self.embeddings_computed += len(indices)
        if IBUG68 in faces.landmarks:
            return face_embeddings(np.asarray(image), faces.landmarks[IBUG68][indices])
        return face_embeddings(np.asarray(image), faces.boxes[indices])

    def _frame_change(self, image: np.ndarray | VideoPicture) -> tuple[bool, bool]:
        """(scene cut, repeat of the previous frame) for the next frame. A `VideoPicture`
        is compared on its fast conversion (`preview`: ~1 level darker, and its chroma is
        not interpolated, so sharp colour edges differ more): every frame gets the same
        conversion, and these tests read only differences between consecutive frames."""
        made = image.notes.get(CHANGE_IMAGES) if isinstance(image, VideoPicture) else None
        if made is not None:
            small, thumbnail = made
        else:
            small, thumbnail = change_images(image, self._grey_buffers)
        previous, self._thumbnail = self._thumbnail, thumbnail
        previous_small, self._small = self._small, small
        if previous is None or previous_small is None:
            return False, False
        contrast = 0.5 * (float(thumbnail.std()) + float(previous.std()))
        threshold = max(self.cut_floor, min(self.cut_threshold, self.cut_contrast * contrast))
        if float(np.abs(thumbnail - previous).mean()) > threshold:
            return True, False
        return False, bool(block_difference(small, previous_small) <= self.repeat_threshold)

    def update(self, image: np.ndarray | VideoPicture, faces: FrameFaces) -> np.ndarray:
        """Link this frame's faces to tracks; returns (N,) track ids in `faces` order."""
        frame = self._frame
        self._frame += 1
        if self._image_size is None:
            self._image_size = faces.image_size
            self._schemes = tuple(sorted(faces.landmarks))
        elif tuple(sorted(faces.landmarks)) != self._schemes:
            raise InputError("landmark schemes changed during the clip")
        cut, repeated = self._frame_change(image)
        self._cuts.append(cut)
        self._repeats.append(repeated)
        n = len(faces)
        ids = np.full(n, -1, np.int64)
        embeddings = np.full((n, EMBEDDING_SIZE), np.nan, np.float32)
        if n == 0:
            return ids

        active = [s for s in self._states if frame - s.last_frame <= self.max_gap]
        if active:
            predicted = np.stack([s.predicted_box(frame) for s in active])
            iou = box_iou(faces.boxes, predicted)
        else:
            iou = np.zeros((n, 0))
        candidates = iou >= self.iou_threshold

        # Ambiguity: a face overlapping several tracks, or a track overlapping several faces.
        ambiguous_faces = set(np.flatnonzero(candidates.sum(axis=1) > 1).tolist())
        for j in np.flatnonzero(candidates.sum(axis=0) > 1):
            ambiguous_faces.update(np.flatnonzero(candidates[:, j]).tolist())
        need = sorted(i for i in ambiguous_faces
                      if any(active[j].identity is not None for j in np.flatnonzero(iou[i] > 0)))
        embeddings[need] = self._embed(image, faces, need)

        cost = 1.0 - iou
        for i in need:
            for j, state in enumerate(active):
                if state.identity is not None:
                    distance = embedding_distance(embeddings[i], state.identity)
                    cost[i, j] += self.embedding_weight * distance / SAME_PERSON_THRESHOLD
                    if distance >= SAME_PERSON_THRESHOLD:
                        candidates[i, j] = False
        if active:
            big = 1e6
            rows, cols = linear_sum_assignment(np.where(candidates, cost, big))
            for i, j in zip(rows, cols, strict=True):
                if candidates[i, j]:
                    ids[i] = active[j].track_id

        # Embeddings for faces left over (to re-identify) and for linked faces whose track is
        # due a refresh; a refresh far from the track's identity unlinks the face (an identity
        # switch the boxes could not see, e.g. two people trading places across a cut).
        states = {s.track_id: s for s in self._states}
        alone = n == 1 and all(s.track_id == ids[0] for s in active)

        def every(state: _TrackState) -> int:
            settled = state.embedding_count >= self.settled_embeddings
            return self.embed_every_alone if alone and settled else self.embed_every

        due = [i for i in range(n) if not np.all(np.isfinite(embeddings[i])) and (
            cut or ids[i] < 0
            or frame - states[ids[i]].last_embedding_frame >= every(states[ids[i]]))]
        embeddings[due] = self._embed(image, faces, due)
        switch = SAME_PERSON_THRESHOLD if cut else self.switch_threshold
        for i in due:
            identity = states[ids[i]].identity if ids[i] >= 0 else None
            if identity is not None and embedding_distance(embeddings[i], identity) >= switch:
                ids[i] = -1
        taken = set(ids[ids >= 0].tolist())
        for i in np.flatnonzero(ids < 0):
            free = [s for s in self._states if s.track_id not in taken and s.identity is not None]
            distances = [embedding_distance(embeddings[i], s.identity) for s in free]
            if distances and min(distances) < self.reid_threshold:
                ids[i] = free[int(np.argmin(distances))].track_id
            else:
                ids[i] = len(self._states)
                state = _TrackState(int(ids[i]), frame, faces.boxes[i].astype(np.float64))
                self._states.append(state)
                states[state.track_id] = state
            taken.add(int(ids[i]))

        # Update each track's motion and identity models.
        for i in range(n):
            state = states[int(ids[i])]
            box = faces.boxes[i].astype(np.float64)
            if frame > state.last_frame and frame - state.last_frame <= 2:
                state.velocity = 0.5 * state.velocity + 0.5 * (box - state.box) / (
                    frame - state.last_frame)
            elif frame != state.last_frame:
                state.velocity = np.zeros(4)
            state.box, state.last_frame = box, frame
            if np.all(np.isfinite(embeddings[i])):
                state.add_embedding(embeddings[i].astype(np.float64), frame)
        self._rows.append({"frame_index": np.full(n, frame, np.int64), "track_id": ids.copy(),
                           "boxes": faces.boxes, "scores": faces.scores,
                           "embeddings": embeddings,
                           **{f"landmarks/{s}": p for s, p in faces.landmarks.items()}})
        return ids

    def skip_frame(self, image_size: tuple[int, int] | None = None) -> None:
        """Count a frame that was not processed (it will have no faces)."""
        self._frame += 1
        self._cuts.append(False)
        self._repeats.append(False)
        self._thumbnail = self._small = None
        if self._image_size is None and image_size is not None:
            self._image_size = image_size

    def result(self) -> Tracks:
        """Everything tracked so far as a Tracks value."""
        rows = self._rows.arrays()
        none = np.zeros(0, np.float32)
        return Tracks(
            n_frames=self._frame,
            image_size=self._image_size or (0, 0),
            frame_index=rows.get("frame_index", none), track_id=rows.get("track_id", none),
            boxes=rows.get("boxes", none), scores=rows.get("scores", none),
            landmarks={s: rows.get(f"landmarks/{s}", none) for s in self._schemes or ()},
            embeddings=rows.get("embeddings", none),
            scene_cut=np.array(self._cuts, bool),
            repeated=np.array(self._repeats, bool),
        )


def _detections(detector: LandmarkBackend, frames: Iterable[np.ndarray], video_mode: bool
                ) -> Iterator[tuple[np.ndarray, FrameFaces]]:
    """(frame, its faces) for each frame, from the detector's tracking mode or per frame."""
    current: list[np.ndarray] = []

    def counted() -> Iterable[np.ndarray]:
        for frame in frames:
            current[:] = [frame]
            yield frame

    stream = detector.detect_video(counted()) if video_mode else (
        detector.detect(f) for f in counted())
    for faces in stream:
        yield current[0], faces


def _first(frames: Iterable[np.ndarray], max_frames: int | None) -> Iterable[np.ndarray]:
    return frames if max_frames is None else itertools.islice(frames, max_frames)


class _Failed(NamedTuple):
    error: BaseException


_END = object()


def prefetched(frames: Iterable[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """The same frames in the same order, produced by a background thread up to `depth`
    frames ahead of the consumer. Decoding and colour conversion (which release the GIL)
    then run on one core while the detector and the tracker run on another; the results do
    not change. The producer's exception is raised here, at the frame where it happened;
    a consumer that stops early stops the producer and closes the source (a decoder) in
    the producer's thread."""
    items: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def produce() -> None:
        source = iter(frames)
        try:
            for frame in source:
                while not stop.is_set():
                    try:
                        items.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(_Failed(exc))
            return
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        items.put(_END)

    worker = threading.Thread(target=produce, name="frame-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting to put, let it finish
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()


def track_faces(frames: Iterable[np.ndarray], backend: LandmarkBackend | str = "mediapipe",
                video_mode: bool = True, max_frames: int | None = None,
                **tracker_options: float) -> Tracks:
    """Detect and track every face of a frame stream in one pass (bounded memory).

    frames: RGB frames (uint8 or [0, 1] float), e.g. decoded with PyAV, or
        `morph3d.io.media.VideoPicture`s (converted to RGB only where they are read).
    backend: a backend or its name; `video_mode` uses its tracking mode (mediapipe).
    tracker_options: passed to FaceTracker.
    """
    own = isinstance(backend, str)
    detector = get_landmark_backend(backend) if isinstance(backend, str) else backend
    tracker = FaceTracker(**tracker_options)
    try:
        frames = prefetched(with_change_images(_first(frames, max_frames)))
        for frame, faces in _detections(detector, frames, video_mode):
            tracker.update(frame, faces)
    finally:
        if own:
            detector.close()
    return tracker.result()


def track_clip(frames: Iterable[np.ndarray], backend: str = "mediapipe",
               max_frames: int | None = None) -> tuple[Tracks, Tracks]:
    """The backend's tracks and the tracks a face is chosen among (`CHOOSER_BACKEND`'s),
    from one decoding pass; the same value when the backend is the chooser. Two trackers
    because the backends' boxes disagree on which face is largest (as on photos,
    `fitting.choice.choose_photo_face`)."""
    key = backend.strip().lower().replace("_", "-")
    if key == CHOOSER_BACKEND:
        tracks = track_faces(frames, backend, max_frames=max_frames)
        return tracks, tracks
    # lockstep: a frame or two apart
    mine, theirs = itertools.tee(prefetched(with_change_images(_first(frames, max_frames))))
    trackers = FaceTracker(), FaceTracker()
    with get_landmark_backend(backend) as own, get_landmark_backend(CHOOSER_BACKEND) as chooser:
        for (frame, faces), (_, chosen) in zip(_detections(own, mine, True),
                                               _detections(chooser, theirs, True),
                                               strict=True):
            trackers[0].update(frame, faces)
            trackers[1].update(frame, chosen)
    return trackers[0].result(), trackers[1].result()
