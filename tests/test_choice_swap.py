"""The swap's face choices on real faces: `--target-face all` on a short two-person clip made
from ../shared/media/three_people.png (skipped when the media is missing), and `--face` for
the source photo."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.media, pytest.mark.slow]

FACE_FRAMES = 4  # frames with the two people; one grey frame follows them


@pytest.fixture(scope="module")
def two_people(media_dir: Path, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A 5-frame 500 x 300 clip: two people of three_people.png side by side, drifting two
    pixels a frame, then a faceless grey frame; written with PyAV (x264, near lossless)."""
    import av

    from morph3d.io.images import read_image

    full = read_image(media_dir / "three_people.png")
    crop = cv2.resize(full[130:730, 440:1440], (500, 300), interpolation=cv2.INTER_AREA)
    frames = [np.ascontiguousarray(np.roll(crop, 2 * k, axis=1)) for k in range(FACE_FRAMES)]
    frames.append(np.full_like(crop, 128))
    path = tmp_path_factory.mktemp("clip") / "two.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 500, 300, "yuv420p"
        stream.options = {"crf": "10"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, frames


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


def face_boxes(image: np.ndarray) -> np.ndarray:
    """The people's boxes in a frame, left to right (x0, y0, x1, y1 pixels)."""
    from fitting.detection import detect_faces

    faces = detect_faces(image, "mediapipe")
    return faces.boxes[np.argsort(faces.boxes[:, 0])]


def change_in(box: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean grey-level difference of two frames inside a box."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    return float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean())


def swap(media_dir: Path, clip: Path, output: Path, work: Path, capsys, *options: str
         ) -> tuple[dict, list[str]]:
    """The swap command in-process: its JSON summary (as printed) and its notes."""
    from morph3d.cli import main

    args = ["swap", "-s", str(media_dir / "mark.jpg"), "-t", str(clip), "-o", str(output),
            "--work-dir", str(work), *options]
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("morph3d: note:")]
    return json.loads(captured.out), notes


def test_target_face_all_swaps_every_person(media_dir: Path, two_people, work: Path,
                                            tmp_path: Path, capsys) -> None:
    """Every person's face changes in every frame they are in, the grey frame is kept and
    counted with its reason; the default swaps one person only."""
    from morph3d.io.media import iter_frames

    clip, _ = two_people
    original = [f.rgb for f in iter_frames(clip)]
    boxes = face_boxes(original[0])
    assert len(boxes) == 2

    summary, notes = swap(media_dir, clip, tmp_path / "all.mp4", work, capsys,
                          "--target-face", "all")
    assert summary["faces"] == 2 and summary["frames"] == FACE_FRAMES + 1
    assert summary["frames_swapped"] == FACE_FRAMES
    assert summary["frames_kept_original"] == {"no face": 1}
    assert any("1 of 5 frame(s) kept the original face (1 no face)" in n for n in notes)
    swapped = [f.rgb for f in iter_frames(tmp_path / "all.mp4")]
    for i in range(FACE_FRAMES):
        for box in face_boxes(original[i]):
            assert change_in(box, original[i], swapped[i]) > 4.0, i
    assert change_in(np.array([0, 0, 500, 300]), original[-1], swapped[-1]) < 1.0

    summary, _ = swap(media_dir, clip, tmp_path / "one.mp4", work, capsys)
    assert summary["faces"] == 1 and summary["frames_swapped"] == FACE_FRAMES
    one = [f.rgb for f in iter_frames(tmp_path / "one.mp4")]
    changes = sorted(change_in(box, original[0], one[0]) for box in boxes)
    assert changes[0] < 1.5 < 4.0 < changes[1]


def test_source_face_picks_the_person_in_the_source_photo(media_dir: Path, tmp_path: Path,
                                                          work: Path, capsys) -> None:
    """`--face K` takes the K-th largest face of a group photo as the user (and says so); a
    K beyond the faces found is a one-line error."""
    from morph3d.cli import main

    target = media_dir / "aligned_target1.png"
    source = media_dir / "three_people.png"
    args = ["swap", "-s", str(source), "-t", str(target), "--work-dir", str(work), "--quiet"]
    assert main([*args, "-o", str(tmp_path / "two.png"), "--face", "2"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("morph3d: note:")]
    assert len(notes) == 1 and "3 faces found, using face index:2, at x" in notes[0]
    assert main([*args, "-o", str(tmp_path / "nine.png"), "--face", "9"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("morph3d")]
    assert len(err) == 1 and "face 9 asked for, but source photo" in err[0]
    assert not (tmp_path / "nine.png").exists()


def test_target_face_all_follows_a_cut_between_two_people(media_dir: Path, work: Path,
                                                          tmp_path: Path, capsys) -> None:
    """A clip that cuts from one person to another: "all" swaps every frame (two people),
    the default keeps the other person's shot and says why."""
    import av

    from morph3d.io.images import read_image

    full = read_image(media_dir / "three_people.png")
    shots = [cv2.resize(full[200:700, 450:950], (240, 240), interpolation=cv2.INTER_AREA),
             cv2.resize(full[150:650, 950:1450], (240, 240), interpolation=cv2.INTER_AREA)]
    clip = tmp_path / "cut.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 240, 240, "yuv420p"
        for k in range(6):
            rgb = np.ascontiguousarray(np.roll(shots[k // 3], k, axis=1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    summary, _ = swap(media_dir, clip, tmp_path / "all.mp4", work, capsys, "--target-face", "all")
    assert (summary["faces"], summary["frames_swapped"]) == (2, 6)
    assert summary["frames_kept_original"] == {}
    summary, notes = swap(media_dir, clip, tmp_path / "one.mp4", work, capsys)
    assert (summary["faces"], summary["frames_swapped"]) == (1, 3)
    assert summary["frames_kept_original"] == {"no face": 3}
    assert any("3 of 6 frame(s) kept the original face (3 no face)" in n for n in notes)
