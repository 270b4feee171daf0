"""People in a clip: which of the face tracks (`fitting.track.Tracks`) is the face the user
asked for, and which tracks are pieces of one person.

A choice is a `fitting.choice` grammar value (largest, N, center, X,Y) or a reference photo's
128-D identity embedding. Over a clip a track's size is its mean box area and its place its
mean box centre; a person whose track the tracker split (a shot cut, an occlusion) is joined
again by identity embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitting.choice import FaceChoice, choose_box, parse_face_choice
from fitting.embedding import EMBEDDING_SIZE, SAME_PERSON_THRESHOLD, embedding_distance
from fitting.faces import IBUG68
from fitting.track import Tracks
from morph3d.errors import InputError, Morph3dError

_BLOCK_ROWS = 64  # rows copied at a time where a whole copy would only be a temporary


def tracks_by_size(tracks: Tracks) -> list[int]:
    """Track ids, largest mean box area over the clip first (ties: lower id first)."""
    areas = tracks.mean_areas()
    return sorted(areas, key=lambda t: (-areas[t], t))


def select_largest(tracks: Tracks) -> int:
    """The track with the largest mean box area over the clip."""
    return select_index(tracks, 0)


def select_index(tracks: Tracks, index: int) -> int:
    """The `index`-th largest track (0 = largest), by mean box area over the clip."""
    ranked = tracks_by_size(tracks)
    if not ranked:
        raise Morph3dError("no face was found in the clip")
    if not 0 <= index < len(ranked):
        raise Morph3dError(f"face index {index} asked for, but the clip has {len(ranked)} "
                           f"face track(s) (indices 0..{len(ranked) - 1})")
    return ranked[index]


def reference_distances(tracks: Tracks, reference: np.ndarray) -> dict[int, float]:
    """Track id -> median embedding distance to `reference` (tracks with embeddings only)."""
    reference = np.asarray(reference, np.float32).reshape(EMBEDDING_SIZE)
    out = {}
    for t in tracks.ids:
        embeddings = tracks.track_embeddings(int(t))
        if len(embeddings):
            out[int(t)] = float(np.median(embedding_distance(embeddings, reference)))
    return out


def select_by_reference(tracks: Tracks, reference: np.ndarray,
                        max_distance: float | None = None) -> int:
    """The track closest to a reference embedding (median over the track's embeddings).

    `max_distance` (e.g. `SAME_PERSON_THRESHOLD`): a one-line InputError when even the
    closest track is that far or farther (another person)."""
    distances = reference_distances(tracks, reference)
    if not distances:
        raise Morph3dError("no face track has an identity embedding to compare with")
    best = min(distances, key=lambda t: (distances[t], t))
    if max_distance is not None and distances[best] >= max_distance:
        raise InputError(f"no face in the clip matches the reference photo (closest identity "
                         f"distance {distances[best]:.2f}, same person below "
                         f"{max_distance:.2f})")
    return best


def select_track(tracks: Tracks, how: str | FaceChoice | np.ndarray) -> int:
    """One entry point: a target-face choice (`fitting.choice`: largest, N, center, X,Y;
    text or parsed) or a (128,) reference embedding, whose track must be the same person
    (within dlib's same-person distance: the closest track of a clip without that person
    is someone else). Over a clip a track's size is its mean box area and its place its
    mean box centre."""
    if isinstance(how, np.ndarray):
        return select_by_reference(tracks, how, max_distance=SAME_PERSON_THRESHOLD)
    choice = parse_face_choice(how)
    if choice.rule in ("largest", "index"):
        return select_index(tracks, choice.index)
    ranked = tracks_by_size(tracks)
    if not ranked:
        raise Morph3dError("no face was found in the clip")
    mean_boxes = np.array([np.nanmean(tracks.track_boxes(t), axis=0) for t in ranked])
    return ranked[choose_box(mean_boxes, tracks.image_size, choice)]


# How far apart two tracks' median identities may be to be one person's pieces. A track's
# median rests on a few embeddings (one every few frames) of faces seen small, blurred or in
# a dim and noisy shot, which move one person's pieces apart by more than the tracker's
# frame-to-frame 0.5; two different people can come within a little of dlib's own 0.6.
JOIN_DISTANCE = 0.55


def same_person_tracks(tracks: Tracks, track: int,
                       max_distance: float = JOIN_DISTANCE) -> list[int]:
    """Other tracks whose median identity embedding is within `max_distance` of `track`'s
    and that never share a frame with it: the pieces of one person the tracker split (at a
    shot cut)."""
    own = tracks.track_embeddings(track)
    if not len(own):
        return []
    distances = reference_distances(tracks, np.median(own, axis=0))
    present = tracks.present(track)
    return [t for t, d in sorted(distances.items(), key=lambda kv: kv[1])
            if t != track and d < max_distance and not (tracks.present(t) & present).any()]


def people(tracks: Tracks) -> list[list[int]]:
    """The clip's people, largest first: each a list of track ids (its largest track, then
    the pieces `same_person_tracks` joins to it)."""
    out: list[list[int]] = []
    taken: set[int] = set()
    for track in tracks_by_size(tracks):
        if track in taken:
            continue
        pieces = [track, *(t for t in same_person_tracks(tracks, track) if t not in taken)]
        taken.update(pieces)
        out.append(pieces)
    return out


def choose_clip_track(tracks: Tracks, select: str | FaceChoice | np.ndarray) -> int:
    """The chosen face's track (`select_track`), except that "largest" ranks by box area
    summed over the clip (mean area x frames present): a person whose track was split by a
    tracker miss keeps the longer piece."""
    if not isinstance(select, np.ndarray) and parse_face_choice(select).rule == "largest":
        areas = tracks.mean_areas()
        if not areas:
            raise Morph3dError("no face was found in the clip")
        return max(areas, key=lambda t: (areas[t] * tracks.present(t).sum(), -t))
    return select_track(tracks, select)


@dataclass
class ChosenPerson:
    """One person of a clip as the landmark backend measured them.

    tracks: the backend's rows of that person only, under the track ids `ids` (joined in
        that order by `joined_trajectory`: the first wins where two have a frame).
    faces_found: how many people the chooser's tracks hold (`people`).
    """

    tracks: Tracks
    ids: list[int]
    faces_found: int


def choose_person(tracks: Tracks, chooser: Tracks, select: str | FaceChoice | np.ndarray,
                  max_shift: float = 0.25) -> ChosenPerson:
    """The chosen person (`choose_clip_track` among `chooser`'s tracks, with the pieces
    `same_person_tracks` joins to it) with `tracks`' landmarks (`track_clip`'s pair). When
    the two differ, each frame of the chosen face takes the backend's face whose 68 points'
    centre is nearest the chosen face's, within `max_shift` of its box's longer side (none:
    the frame has no face)."""
    track = choose_clip_track(chooser, select)
    pieces = [track, *same_person_tracks(chooser, track)]
    found = len(people(chooser))
    if tracks is chooser:
        rows = np.isin(tracks.track_id, pieces)
        ids = tracks.track_id if rows.all() else tracks.track_id[rows]
        return ChosenPerson(_rows(tracks, rows, ids), pieces, found)
    chosen: dict[int, tuple[np.ndarray, float]] = {}
    for t in reversed(pieces):  # the chosen track wins where pieces share a frame
        for r in np.flatnonzero(chooser.track_id == t):
            box = chooser.boxes[r]
            chosen[int(chooser.frame_index[r])] = (chooser.landmarks[IBUG68][r].mean(axis=0),
                                                   float((box[2:] - box[:2]).max()))
    keep = np.zeros(len(tracks), bool)
    for frame, (centre, size) in chosen.items():
        rows = tracks.rows_in_frame(frame)
        if len(rows):
            shift = np.linalg.norm(tracks.landmarks[IBUG68][rows].mean(axis=1) - centre, axis=1)
            best = int(np.argmin(shift))
            keep[rows[best]] = shift[best] < max_shift * size
    return ChosenPerson(_rows(tracks, keep, np.zeros(int(keep.sum()), np.int64)), [0], found)


def _rows(tracks: Tracks, rows: np.ndarray, track_id: np.ndarray) -> Tracks:
    """The tracks' `rows` (bool mask) only, under the given track ids; every row (one
    person's clip) shares the tracks' arrays instead of copying them."""
    if rows.all():
        return Tracks(tracks.n_frames, tracks.image_size, tracks.frame_index, track_id,
                      tracks.boxes, tracks.scores, tracks.landmarks, tracks.embeddings,
                      tracks.scene_cut, tracks.repeated)
    return Tracks(tracks.n_frames, tracks.image_size, tracks.frame_index[rows], track_id,
                  tracks.boxes[rows], tracks.scores[rows],
                  {s: p[rows] for s, p in tracks.landmarks.items()}, tracks.embeddings[rows],
                  tracks.scene_cut, tracks.repeated)


def joined_trajectory(tracks: Tracks, ids: list[int], scheme: str = IBUG68) -> np.ndarray:
    """(n_frames, L, 2) landmarks of one person whose face is split over tracks `ids`: the
    first id's trajectory, its missing frames filled from the next ids in order."""
    points = tracks.trajectory(ids[0], scheme)
    values = tracks.landmarks[scheme]
    for other in ids[1:]:
        # From the other track's rows a block at a time, not via its own (n_frames, L, 2)
        # trajectory: that would be a second copy of the clip's points.
        rows = np.flatnonzero(tracks.track_id == other)
        for start in range(0, len(rows), _BLOCK_ROWS):
            block = rows[start:start + _BLOCK_ROWS]
            frames = tracks.frame_index[block]
            piece = values[block]
            fill = ~np.isfinite(points[frames]).all(axis=(1, 2)) & np.isfinite(piece).all(
                axis=(1, 2))
            points[frames[fill]] = piece[fill]
    return points
