"""Which face of a clip or image to take: the one grammar of every face option (`--target-face`
of swap, template build, batch rows and eval; `--face` of fit and of the swap's source photos)
and its choice among boxes, face tracks or the faces of a photo.

    largest      the largest face (by box area; over a clip, by mean box area); ``auto`` is
                 the same (the default of `--face`)
    N            the N-th largest (0 = largest); ``index:N`` is the same, as cache keys and
                 template manifests spell it
    center       the face whose box centre is nearest the image centre
    X,Y          the face whose box centre is nearest that pixel
    REF.jpg      the face most like the largest face of a reference photo (any still-image
                 file name): nearest by dlib's 128-D identity embedding, within dlib's
                 same-person distance
    all          every face (the swap's `--target-face` only)

Each option says which forms it takes (`parse_face_choice(..., allow=...)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from morph3d.errors import InputError, Morph3dError

if TYPE_CHECKING:
    from fitting.faces import FrameFaces

GRAMMAR = "largest, N (0 = largest), center or a pixel X,Y"
# The forms beyond GRAMMAR that an option may allow, in the words of its error message.
EXTRA_FORMS = {"reference": "a reference photo REF.jpg", "all": "all"}
ALL_FORMS = tuple(EXTRA_FORMS)
# The detector whose boxes a photo's face is chosen among, whatever the landmark backend:
# the landmark backends' own detectors disagree on which face is largest (dlib's HOG boxes
# are one size for every face), so choosing among each backend's own boxes fitted different
# people with different backends.
CHOOSER_BACKEND = "mediapipe"


@dataclass(frozen=True)
class FaceChoice:
    """A parsed face option; `str()` gives its canonical text (parsed back equal)."""

    rule: str = "largest"  # largest | index | center | point | reference | all
    index: int = 0
    point: tuple[float, float] | None = None
    reference: str | None = field(default=None)  # the reference photo's path (rule reference)

    def __str__(self) -> str:
        if self.rule == "index":
            return f"index:{self.index}"
        if self.rule == "point" and self.point is not None:
            return f"{self.point[0]:g},{self.point[1]:g}"
        if self.rule == "reference" and self.reference is not None:
            return self.reference
        return self.rule


def grammar(allow: tuple[str, ...] = ()) -> str:
    """The forms an option takes, in words (for its help and error messages)."""
    forms = ["largest", "N (0 = largest)", "center", "a pixel X,Y",
             *(EXTRA_FORMS[a] for a in allow)]
    return f"{', '.join(forms[:-1])} or {forms[-1]}"


def parse_face_choice(text: str | FaceChoice, what: str = "target face",
                      allow: tuple[str, ...] = ()) -> FaceChoice:
    """`text` in the grammar above -> FaceChoice; anything else, or a form not in `allow`
    (of `EXTRA_FORMS`: "reference", "all"), is a one-line InputError naming the option
    (`what`). A FaceChoice is returned as it is if its form is allowed."""
    choice = text if isinstance(text, FaceChoice) else _parse(str(text))
    if choice is None:
        raise InputError(f"{what} takes {grammar(allow)}, not {str(text)!r}")
    if choice.rule in EXTRA_FORMS and choice.rule not in allow:
        raise InputError(f"{what} takes {grammar(allow)}, not {str(text)!r}")
    return choice


def _parse(text: str) -> FaceChoice | None:
    from morph3d.io.images import is_image_path

    key = text.strip().lower()
    if key in ("largest", "auto", ""):
        return FaceChoice()
    if key in ("center", "centre"):
        return FaceChoice("center")
    if key == "all":
        return FaceChoice("all")
    number = key[len("index:"):].strip() if key.startswith("index:") else key
    if number.isdigit():
        index = int(number)
        return FaceChoice("index", index) if index else FaceChoice()
    parts = key.split(",")
    if len(parts) == 2:
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if math.isfinite(x) and math.isfinite(y):
                return FaceChoice("point", point=(x, y))
    if is_image_path(text.strip()):
        return FaceChoice("reference", reference=text.strip())
    return None


def choose_box(boxes: np.ndarray, image_size: tuple[int, int], choice: FaceChoice,
               areas: np.ndarray | None = None) -> int:
    """Index of the chosen face among (N > 0, 4) boxes x0, y0, x1, y1 (ties go to the first);
    -1 when the choice asks for the N-th largest of fewer faces. `areas`: what "largest"
    ranks by (default: the boxes' areas). A reference photo or "all" is no choice among
    boxes alone: an InputError."""
    if choice.rule not in ("largest", "index", "center", "point"):
        raise InputError(f"face choice {str(choice)!r} cannot be made here: it takes "
                         f"{GRAMMAR}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if areas is None:
        areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    if choice.rule in ("largest", "index"):
        ranked = np.argsort(-np.asarray(areas, np.float64), kind="stable")
        return int(ranked[choice.index]) if choice.index < len(ranked) else -1
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if choice.rule == "center":
        h, w = image_size
        point = np.array([(w - 1) / 2, (h - 1) / 2])
    else:
        point = np.asarray(choice.point, np.float64)
    return int(np.argmin(np.linalg.norm(centres - point, axis=1)))


# --------------------------------------------------------------------------------------------
# A photo's face, the same for every landmark backend
# --------------------------------------------------------------------------------------------


@dataclass
class ChosenFace:
    """The face a photo fit uses: its landmarks from the fit's backend and the box it was
    chosen by.

    landmarks: scheme -> (L, 2) float64 pixels, from the landmark backend.
    box: (4,) x0, y0, x1, y1 edges in pixels (`fitting.faces` conventions) of the chosen
        face, from `detector`'s boxes.
    faces_found: how many faces `detector` found in the photo.
    """

    landmarks: dict[str, np.ndarray]
    box: np.ndarray
    faces_found: int
    detector: str
    choice: str
    turns: int = 0  # quarter turns (counter-clockwise) the photo was measured upright in

    def to_dict(self) -> dict:
        """JSON-ready: the box as x, y (its top-left pixel) and w, h (pixels);
        `upright_turn_deg`: how far (counter-clockwise) the photo was turned for its faces
        to be measured upright (0 when it was upright)."""
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return {"choice": self.choice, "detector": self.detector,
                "faces_found": self.faces_found,
                "box": {"x": round(x0 + 0.5, 1), "y": round(y0 + 0.5, 1),
                        "w": round(x1 - x0, 1), "h": round(y1 - y0, 1)},
                "upright_turn_deg": 90 * self.turns}

    def describe(self) -> str:
        """In words, e.g. "the largest face, at x 526, y 132 (145 x 145 px)"."""
        b = self.to_dict()["box"]
        which = {"auto": "the largest face"}.get(self.choice, f"face {self.choice}")
        return f"{which}, at x {b['x']:g}, y {b['y']:g} ({b['w']:g} x {b['h']:g} px)"


def reference_embedding(photo: str | Path | np.ndarray) -> np.ndarray:
    """(128,) identity embedding of the largest face (by `CHOOSER_BACKEND`'s boxes, whatever
    the landmark backend) in a reference photo: its file or its RGB pixels, measured upright
    (`upright_turns`). A one-line InputError when it has none."""
    from fitting.detection import detect_faces_bounded
    from fitting.embedding import face_embedding
    from fitting.faces import IBUG68
    from morph3d.io.images import read_image

    image = photo if isinstance(photo, np.ndarray) else read_image(photo)
    turns = upright_turns(image)
    if turns:
        image = np.ascontiguousarray(np.rot90(image, turns))
    faces = detect_faces_bounded(image, CHOOSER_BACKEND)
    if not len(faces):
        where = "" if isinstance(photo, np.ndarray) else f" {photo}"
        raise InputError(f"no face found in the reference photo{where}")
    best = int(np.argmax(faces.areas()))
    return face_embedding(image, faces.landmarks[IBUG68][best])


def choose_face(faces: FrameFaces, image: np.ndarray, choice: FaceChoice,
                source: str = "the photo") -> int:
    """Index of the chosen face among a photo's `faces` (at least one): by box (`choose_box`)
    or by identity embedding (reference photo). A choice that matches no face is a
    one-line InputError."""
    from fitting.embedding import SAME_PERSON_THRESHOLD, embedding_distance, face_embeddings
    from fitting.faces import IBUG68

    n = len(faces)
    if choice.rule == "reference":
        reference = reference_embedding(choice.reference or "")
        located = faces.landmarks[IBUG68] if IBUG68 in faces.landmarks else faces.boxes
        distances = embedding_distance(face_embeddings(image, located), reference)
        best = int(np.argmin(distances))
        if distances[best] >= SAME_PERSON_THRESHOLD:
            raise InputError(f"no face in {source} matches the reference photo "
                             f"{choice.reference} (closest identity distance "
                             f"{distances[best]:.2f}, same person below "
                             f"{SAME_PERSON_THRESHOLD:.2f})")
        return best
    k = choose_box(faces.boxes, faces.image_size, choice)
    if k < 0:
        raise InputError(f"face {choice.index} asked for, but {source} has {n} face(s) "
                         f"(0..{n - 1}, largest first)")
    return k


# How far (mean distance over the eyes' outer-corner distance) dlib's 68 points on a face
# may lie from mediapipe's for the two to be one upright face: the two detectors' points on
# an upright face, turned far aside too, agree well within it; dlib's rare false faces in a
# turned copy lie far off or beside any face mediapipe measures (BENCHMARKS.md)
UPRIGHT_AGREEMENT = 0.3


def upright_turns(image: np.ndarray, upright: FrameFaces | None = None) -> int:
    """Quarter turns (`np.rot90`'s k, counter-clockwise) that stand a photo's faces upright.

    A phone photo whose orientation tag was lost arrives sideways or upside down; mediapipe
    still boxes an upside-down face, but its mesh then reads it as an upright one (the eyes
    where the mouth is), and the fit and the texture are nonsense. dlib's HOG detector finds
    upright faces only: when it finds none in the photo as it is but does in exactly one
    turn of it, with its 68 points on a face `CHOOSER_BACKEND` measures there too
    (`UPRIGHT_AGREEMENT`), that turn is upright. A photo dlib finds no face in at any turn
    (a head turned far aside) is taken as it is. `upright`: dlib's faces in the photo as it
    is, when the caller has them."""
    from fitting.detection import detect_faces_bounded
    from fitting.faces import IBUG68

    if len(detect_faces_bounded(image, "dlib") if upright is None else upright):
        return 0
    found = []
    for k in (1, 2, 3):
        turned = np.ascontiguousarray(np.rot90(image, k))
        dlib_faces = detect_faces_bounded(turned, "dlib")
        if not len(dlib_faces):
            continue
        measured = detect_faces_bounded(turned, CHOOSER_BACKEND).landmarks.get(IBUG68, [])
        for points in dlib_faces.landmarks[IBUG68]:
            corners = float(np.linalg.norm(points[36] - points[45]))
            if any(np.linalg.norm(other - points, axis=1).mean() < UPRIGHT_AGREEMENT * corners
                   for other in measured):
                found.append(k)
                break
    return found[0] if len(found) == 1 else 0


def points_before_turns(points: np.ndarray, turns: int, turned_shape: tuple[int, ...]
                        ) -> np.ndarray:
    """Pixel positions (..., 2: x, y; pixel centres at whole numbers) in
    ``np.rot90(image, turns)``, whose shape is `turned_shape`, as positions in `image`
    (the turns that complete the full turn)."""
    return points_after_turns(points, -turns, turned_shape)


def points_after_turns(points: np.ndarray, turns: int, shape: tuple[int, ...]) -> np.ndarray:
    """Pixel positions (..., 2: x, y) in an image of `shape` as positions in
    ``np.rot90(image, turns)``."""
    p = np.asarray(points, np.float64)
    h, w = shape[:2]
    for _ in range(turns % 4):  # one counter-clockwise turn
        p = np.stack([p[..., 1], w - 1 - p[..., 0]], -1)
        h, w = w, h
    return p


def choose_photo_face(image: np.ndarray, backend: str, choice: FaceChoice,
                      source: str = "the photo") -> ChosenFace:
    """The chosen face of a photo with the landmarks of `backend` (any landmark backend, or
    "dlib+mediapipe"): the face is chosen once among `CHOOSER_BACKEND`'s boxes and every
    backend measures that face (its own detection nearest the chosen face; dlib's shape
    predictor on the chosen box where dlib's detector misses it). Only
    when the chooser finds no face are the backend's own boxes chosen among.
    A photo lying sideways or upside down (`upright_turns`) is measured turned upright;
    the landmarks and box are given in the photo's own pixels all the same.
    Morph3dError when no face is found; InputError when the choice matches none."""
    from fitting.detection import detect_faces_bounded

    if choice.rule == "all":
        raise InputError("a photo fit takes one face: choose one, not all")
    dlib_faces = detect_faces_bounded(image, "dlib")  # the turn test's, and dlib's landmarks
    turns = upright_turns(image, dlib_faces)
    if not turns:
        return _chosen_face(image, backend, choice, source, dlib_faces)
    turned = np.ascontiguousarray(np.rot90(image, turns))
    if choice.rule == "point" and choice.point is not None:
        x, y = points_after_turns(np.array(choice.point), turns, image.shape)
        choice = FaceChoice("point", point=(float(x), float(y)))
    chosen = _chosen_face(turned, backend, choice, source)
    corners = points_before_turns(chosen.box.reshape(2, 2), turns, turned.shape)
    return ChosenFace({s: points_before_turns(p, turns, turned.shape)
                       for s, p in chosen.landmarks.items()},
                      np.concatenate([corners.min(0), corners.max(0)]), chosen.faces_found,
                      chosen.detector, chosen.choice, turns)


def _chosen_face(image: np.ndarray, backend: str, choice: FaceChoice, source: str,
                 dlib_faces: FrameFaces | None = None) -> ChosenFace:
    """`choose_photo_face` on a photo as it is (`dlib_faces`: dlib's, when found already)."""
    from fitting.detection import detect_faces_bounded
    from fitting.faces import IBUG68

    key = backend.strip().lower().replace("_", "-")
    detector = CHOOSER_BACKEND
    faces = detect_faces_bounded(image, CHOOSER_BACKEND)
    if not len(faces) and key not in (CHOOSER_BACKEND, "dlib+mediapipe"):
        detector = key
        faces = detect_faces_bounded(image, key)
    if not len(faces):
        raise Morph3dError(f"no face found in {source}")
    k = choose_face(faces, image, choice, source)
    landmarks = {s: p[k].astype(np.float64) for s, p in faces.landmarks.items()}
    if key not in (detector, "mediapipe"):
        own_backend = "dlib" if key == "dlib+mediapipe" else key
        own = (dlib_faces if own_backend == "dlib" and dlib_faces is not None
               else detect_faces_bounded(image, own_backend))
        j = nearest_face(own, landmarks[IBUG68], faces.boxes[k])
        if j >= 0:
            points = own.landmarks[IBUG68][j].astype(np.float64)
        elif key.startswith("dlib"):  # a turned head: the predictor still finds its outline
            points = dlib_points_for(image, faces.boxes[k])
        else:
            raise Morph3dError(f"the {backend} backend finds no face at the chosen face in "
                               f"{source}; use the mediapipe or dlib backend")
        if key == "dlib+mediapipe":
            landmarks[IBUG68] = points
        else:
            landmarks = {IBUG68: points}
    return ChosenFace(landmarks, faces.boxes[k].astype(np.float64), len(faces), detector,
                      str(choice) if choice.rule != "largest" else "auto")


def nearest_face(faces: FrameFaces, points: np.ndarray, box: np.ndarray,
                 max_shift: float = 0.25) -> int:
    """Index of the face among `faces` whose 68 points' centre is nearest the chosen face's
    (`points`, (68, 2)), or -1 when none is within `max_shift` of the chosen `box`'s longer
    side: another backend's detection of the same face."""
    from fitting.faces import IBUG68

    if not len(faces):
        return -1
    centres = faces.landmarks[IBUG68].mean(axis=1)
    distances = np.linalg.norm(centres - np.nanmean(points, axis=0), axis=1)
    best = int(np.argmin(distances))
    size = float(max(box[2] - box[0], box[3] - box[1]))
    return best if distances[best] < max_shift * size else -1


# The box dlib's shape predictor is given around a face its detector missed: the chooser's
# (mediapipe's) box scaled about its centre. mediapipe's and dlib's HOG boxes of the same
# face nearly coincide; on three_people.png (full and half size) the predictor's points from
# the scaled box are within 1-2 % NME (outer-eye-corner distance) of the points from dlib's
# own box on the two near-frontal faces at 1.0-1.1, and closest on the turned face at 1.1-1.2.
DLIB_BOX_SCALE = 1.1


def dlib_points_for(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 points of a face its detector missed (a turned head), from the chooser's
    box of the face ((4,) x0, y0, x1, y1 edges, pixels)."""
    from fitting.dlib_backend import dlib_rectangle, dlib_shape_predictor
    from fitting.faces import as_rgb_uint8

    box = np.asarray(box, np.float64)
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * DLIB_BOX_SCALE
    rect = dlib_rectangle(np.concatenate([centre - half, centre + half]))
    shape = dlib_shape_predictor(68)(as_rgb_uint8(image), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)
