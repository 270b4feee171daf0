"""Choosing faces: the one grammar of `--face` / `--target-face` (`fitting.choice`), a photo's
face chosen once for every landmark backend (`fit --face`, the swap's source photos), and
`swap --target-face all`. The real-media tests use ../shared/media/three_people.png (three
people; skipped when the media is missing) at half size."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fitting.choice import ALL_FORMS, FaceChoice, choose_photo_face, parse_face_choice
from morph3d.errors import InputError
from morph3d.swap.options import SwapOptions

BACKENDS = ("mediapipe", "dlib", "dlib+mediapipe")


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    from fitting.faces import box_iou as iou

    return float(iou(a, b)[0, 0])


def box_of(face: dict) -> np.ndarray:
    """fit --json's face box (x, y top-left pixel, w, h) -> x0, y0, x1, y1 edges."""
    b = face["box"]
    return np.array([b["x"] - 0.5, b["y"] - 0.5, b["x"] - 0.5 + b["w"], b["y"] - 0.5 + b["h"]])


# ----------------------------------------------------------------------------- the grammar


def test_face_options_share_one_grammar():
    """auto = largest; a still-image file name is a reference photo; "all" and reference
    photos only where the option allows them; str() parses back; errors are one line that
    name the option."""
    assert parse_face_choice("auto") == parse_face_choice("largest") == FaceChoice()
    assert parse_face_choice("ref.JPG", allow=("reference",)) == FaceChoice(
        "reference", reference="ref.JPG")
    assert parse_face_choice("all", allow=ALL_FORMS) == FaceChoice("all")
    for text in ("auto", "2", "center", "3,4", "dir/me.png", "all"):
        choice = parse_face_choice(text, allow=ALL_FORMS)
        assert parse_face_choice(str(choice), allow=ALL_FORMS) == choice
    for text, allow in (("all", ()), ("me.png", ()), ("all", ("reference",)),
                        ("me.txt", ALL_FORMS)):
        with pytest.raises(InputError) as err:
            parse_face_choice(text, "--face", allow)
        assert str(err.value).startswith("--face takes largest, N (0 = largest), center")
        assert "\n" not in str(err.value)


def test_swap_options_take_the_face_forms_each_side_allows():
    """The target may be every face or a reference photo (kept as target_face_ref); the
    source is one face (a reference photo allowed, "all" not)."""
    options = SwapOptions(target_face="all", source_face="2")
    assert options.target_face == FaceChoice("all")
    assert options.source_face == FaceChoice("index", 2)
    by_photo = SwapOptions(target_face="actor.png", source_face="me_alone.jpg")
    assert by_photo.target_face == FaceChoice() and by_photo.target_face_ref == Path("actor.png")
    assert by_photo.source_face.reference == "me_alone.jpg"
    with pytest.raises(InputError, match="source face takes"):
        SwapOptions(source_face="all")
    with pytest.raises(InputError, match="once"):
        SwapOptions(target_face="actor.png", target_face_ref=Path("other.png"))


def test_a_template_holds_one_face(tmp_path: Path):
    """A clip fit (what a template stores) is one face: "all" is refused in one line."""
    from morph3d.swap.fits import fit_clip

    with pytest.raises(InputError, match="holds one face"):
        fit_clip(tmp_path / "clip.mp4", None, SwapOptions(target_face="all"))


# ----------------------------------------------------------------------------- photos


@pytest.fixture(scope="module")
def three(media_dir: Path, tmp_path_factory) -> tuple[Path, np.ndarray, Path]:
    """three_people.png at half size (written to a temporary PNG), and the full image."""
    from morph3d.io.images import read_image, write_image

    full = read_image(media_dir / "three_people.png")
    half = cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("three") / "three_half.png"
    write_image(path, half)
    return path, half, media_dir / "three_people.png"


@pytest.mark.media
def test_face_index_fits_three_different_faces(three):
    _, image, _ = three
    chosen = [choose_photo_face(image, "mediapipe", parse_face_choice(str(k))) for k in range(3)]
    assert [c.faces_found for c in chosen] == [3, 3, 3]
    areas = [float(np.prod(c.box[2:] - c.box[:2])) for c in chosen]
    assert areas == sorted(areas, reverse=True)  # N-th largest
    for a in range(3):
        for b in range(a + 1, 3):
            assert box_iou(chosen[a].box, chosen[b].box) == 0.0
    with pytest.raises(InputError, match="face 3 asked for, but .* has 3 face"):
        choose_photo_face(image, "mediapipe", parse_face_choice("3"))


@pytest.mark.media
@pytest.mark.parametrize("choice", ["auto", "1", "2"])
def test_every_backend_fits_the_chosen_face(three, choice):
    """The box is chosen among one detector's boxes; every backend's 68 points lie on that
    face (dlib's own detector ranks these faces differently: its boxes are one size)."""
    _, image, _ = three
    parsed = parse_face_choice(choice)
    chosen = {b: choose_photo_face(image, b, parsed) for b in BACKENDS}
    box = chosen["mediapipe"].box
    for backend, face in chosen.items():
        np.testing.assert_array_equal(face.box, box)
        points = face.landmarks["ibug68"]
        centre, size = (box[:2] + box[2:]) / 2, float(box[2] - box[0])
        assert np.linalg.norm(points.mean(0) - centre) < 0.25 * size, backend
    assert set(chosen["dlib"].landmarks) == {"ibug68"}
    assert set(chosen["dlib+mediapipe"].landmarks) == {"ibug68", "mediapipe478"}


@pytest.mark.media
def test_dlib_backends_use_the_predictor_where_dlibs_detector_misses(media_dir: Path):
    """With the lower face hidden dlib's detector finds no face where mediapipe's does: both
    dlib backends then take dlib's shape predictor on the chosen box (mediapipe's derived 68
    are much further off on a turned head), and "dlib+mediapipe" keeps mediapipe's mesh."""
    from fitting.choice import dlib_points_for
    from fitting.detection import detect_faces
    from morph3d.io.images import read_image

    image = read_image(media_dir / "mark.jpg").copy()
    box = detect_faces(image, "mediapipe").boxes[0]
    image[int((box[1] + box[3]) / 2):int(box[3]) + 5] = 0
    assert len(detect_faces(image, "dlib")) == 0
    auto = parse_face_choice("auto")
    both = choose_photo_face(image, "dlib+mediapipe", auto)
    alone = choose_photo_face(image, "dlib", auto)
    predicted = dlib_points_for(image, both.box)
    np.testing.assert_array_equal(both.landmarks["ibug68"], predicted)
    np.testing.assert_array_equal(alone.landmarks["ibug68"], predicted)
    assert set(both.landmarks) == {"ibug68", "mediapipe478"}
    # the fit's own step 1 (`fit_photo` without landmarks) chooses and measures the same
    from fitting.fit import detect_landmarks

    np.testing.assert_array_equal(detect_landmarks(image, "dlib+mediapipe")["ibug68"],
                                  predicted)


@pytest.mark.media
def test_dlib_points_where_its_detector_misses_the_face(three):
    """The predictor on the chosen (mediapipe) box gives about what dlib's own detection
    gives (NME over the outer-eye-corner distance): closely on the two near-frontal faces,
    roughly on the turned one."""
    from fitting.choice import dlib_points_for
    from fitting.detection import detect_faces

    _, image, _ = three
    own = detect_faces(image, "dlib")
    for k in range(3):
        face = choose_photo_face(image, "mediapipe", parse_face_choice(str(k)))
        points = dlib_points_for(image, face.box)
        j = int(np.argmin(np.linalg.norm(own.landmarks["ibug68"].mean(1) - points.mean(0), axis=1)))
        truth = own.landmarks["ibug68"][j]
        nme = np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45])
        assert nme < (0.05 if k < 2 else 0.25), (k, nme)


@pytest.mark.media
def test_reference_photo_picks_the_face_most_like_it(three, media_dir: Path, tmp_path: Path):
    """A crop of one face from the full-size photo picks that face in the half-size copy;
    a photo of someone else matches none (one-line error)."""
    from morph3d.io.images import read_image, write_image

    _, image, full_path = three
    target = choose_photo_face(image, "mediapipe", parse_face_choice("2"))
    x0, y0, x1, y1 = (target.box * 2).astype(int)
    pad = (x1 - x0) // 2
    full = read_image(full_path)
    reference = tmp_path / "person.jpg"
    write_image(reference, full[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad])
    for backend in ("mediapipe", "dlib"):
        chosen = choose_photo_face(image, backend,
                                   parse_face_choice(str(reference), allow=ALL_FORMS))
        np.testing.assert_array_equal(chosen.box, target.box)
    with pytest.raises(InputError, match="matches the reference photo") as err:
        choose_photo_face(image, "mediapipe",
                          parse_face_choice(str(media_dir / "mark.jpg"), allow=ALL_FORMS))
    assert "\n" not in str(err.value)


@pytest.mark.media
@pytest.mark.slow
def test_fit_json_says_which_face_was_fitted(three, tmp_path: Path, capsys):
    from morph3d.cli import main

    path, image, _ = three
    out = tmp_path / "fit.json"
    assert main(["fit", str(path), "--face", "1", "--backend", "dlib", "--no-photometric",
                 "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    face = summary["face"]
    assert face["faces_found"] == 3 and face["choice"] == "index:1"
    chosen = choose_photo_face(image, "mediapipe", parse_face_choice("1"))
    assert box_iou(box_of(face), chosen.box) > 0.99
    points = np.array(summary["frames"][0]["landmarks68"])
    centre, size = (chosen.box[:2] + chosen.box[2:]) / 2, float(chosen.box[2] - chosen.box[0])
    assert np.linalg.norm(points.mean(0) - centre) < 0.25 * size


@pytest.mark.media
def test_fit_face_that_matches_no_face_is_one_line(three, tmp_path: Path, capsys):
    from morph3d.cli import main

    path, _, _ = three
    for face, fragment in (("5", "face 5 asked for, but"), ("biggest", "--face takes")):
        assert main(["fit", str(path), "--face", face, "--quiet", "--json",
                     str(tmp_path / "f.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("morph3d: error: ") and fragment in err[0]
    assert not (tmp_path / "f.json").exists()


def test_batch_rows_take_face_options_with_reference_photos(tmp_path: Path):
    """A row's source_face / target_face may be a reference photo: resolved beside the
    manifest, part of the job's key by content, and an input no output may replace."""
    from morph3d.swap.batch_manifest import (
        Job,
        job_key,
        parse_options,
        reference_options,
        swap_options,
    )

    options = parse_options("source_face=refs/me.png;target_face=all", tmp_path)
    assert options == {"source_face": str(tmp_path / "refs" / "me.png"), "target_face": "all"}
    job = Job(row=1, sources=[tmp_path / "a.jpg"], target=tmp_path / "c.mp4", output="o.mp4",
              options=options)
    assert reference_options(job) == {"source_face": tmp_path / "refs" / "me.png"}
    built = swap_options(job, None)
    assert built.target_face == FaceChoice("all")
    assert built.source_face.reference == str(tmp_path / "refs" / "me.png")
    contents = {"me.png": "one"}

    def digest(path: Path) -> str:
        return contents.get(path.name, path.name)

    first = job_key(job, digest)
    contents["me.png"] = "two"
    assert job_key(job, digest) != first
    with pytest.raises(InputError, match="bad value for job option source_face"):
        parse_options("source_face=all", tmp_path)


@pytest.mark.media
@pytest.mark.slow
def test_fit_video_reference_of_someone_else_is_one_line(media_dir: Path, tmp_path: Path,
                                                          capsys):
    """On a clip the closest track is taken; a reference photo of another person fails."""
    from morph3d.cli import main

    assert main(["fit", str(media_dir / "orig.webm"), "--max-frames", "2", "--quiet",
                 "--no-photometric", "--face", str(media_dir / "mark.jpg"), "--json",
                 str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matches the reference photo" in err[0]
    assert not (tmp_path / "f.json").exists()


# ----------------------------------------------------------------------------- turned photos


def test_turn_helpers_follow_numpys_quarter_turns():
    """A pixel marked in an image is where `points_after_turns` puts it in np.rot90's turned
    copy, and `points_before_turns` brings it back."""
    from fitting.choice import points_after_turns, points_before_turns

    image = np.zeros((4, 7), int)
    image[2, 5] = 1  # x 5, y 2
    for k in range(5):
        turned = np.rot90(image, k)
        y, x = np.argwhere(turned == 1)[0]
        np.testing.assert_array_equal(points_after_turns(np.array([5, 2]), k, image.shape),
                                      [x, y])
        np.testing.assert_array_equal(points_before_turns(np.array([x, y]), k, turned.shape),
                                      [5, 2])


@pytest.mark.media
def test_a_sideways_or_upside_down_photo_is_measured_upright(media_dir: Path):
    """mark.jpg turned by each quarter turn: its face is measured turned back upright, so its
    landmarks are the upright photo's, carried into the turned photo's pixels (mediapipe's
    mesh reads an upside-down face as an upright one: its eyes would lie below its mouth)."""
    from fitting.choice import points_after_turns
    from morph3d.io.images import read_image

    photo = read_image(media_dir / "mark.jpg")
    auto = parse_face_choice("auto")
    for backend in ("mediapipe", "dlib+mediapipe"):
        upright = choose_photo_face(photo, backend, auto)
        assert upright.turns == 0 and upright.to_dict()["upright_turn_deg"] == 0
        for k in (1, 2, 3):
            turned = np.ascontiguousarray(np.rot90(photo, k))
            chosen = choose_photo_face(turned, backend, auto)
            assert chosen.to_dict()["upright_turn_deg"] == 90 * (4 - k)
            for scheme, points in upright.landmarks.items():
                np.testing.assert_allclose(chosen.landmarks[scheme],
                                           points_after_turns(points, k, photo.shape),
                                           atol=1e-9)
            corners = points_after_turns(upright.box.reshape(2, 2), k, photo.shape)
            np.testing.assert_allclose(chosen.box, [*corners.min(0), *corners.max(0)],
                                       atol=1e-9)
    upside_down = choose_photo_face(np.ascontiguousarray(np.rot90(photo, 2)), "mediapipe",
                                    auto).landmarks["ibug68"]
    assert upside_down[48:68, 1].mean() < upside_down[36:48, 1].mean()  # mouth above eyes
    # a reference photo (--face REF.jpg, --target-face-ref) is read upright too
    from fitting.choice import reference_embedding

    np.testing.assert_allclose(reference_embedding(np.ascontiguousarray(np.rot90(photo, 2))),
                               reference_embedding(photo), atol=1e-6)


@pytest.mark.media
def test_fit_of_an_upside_down_photo_is_the_upright_fit_turned(media_dir: Path,
                                                                tmp_path: Path, capsys):
    """`morph3d fit` on mark.jpg upside down: the same head, rolled half a turn; its 68 points
    are the upright fit's in the turned photo's pixels, and the JSON and the report say the
    turn."""
    from fitting.choice import points_after_turns
    from morph3d.cli import main
    from morph3d.io.images import read_image, write_image

    photo = read_image(media_dir / "mark.jpg")
    turned = tmp_path / "upside_down.png"
    write_image(turned, np.ascontiguousarray(np.rot90(photo, 2)))
    fits = {}
    for name, path in (("upright", media_dir / "mark.jpg"), ("turned", turned)):
        out = tmp_path / f"{name}.json"
        assert main(["fit", str(path), "--no-photometric", "--json", str(out)]) == 0
        fits[name] = json.loads(out.read_text())
        said = "measured turned upright (180 deg)" in capsys.readouterr().out
        assert said == (name == "turned")
    assert fits["turned"]["face"]["upright_turn_deg"] == 180
    upright, down = fits["upright"]["frames"][0], fits["turned"]["frames"][0]
    assert abs(abs(down["roll"] - upright["roll"]) - 180) < 1.0
    np.testing.assert_allclose(np.array(down["landmarks68"]),
                               points_after_turns(np.array(upright["landmarks68"]), 2,
                                                  photo.shape), atol=0.5)
