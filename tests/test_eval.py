"""`morph3d eval`: metric definitions on synthetic data, then sanity checks on real clips."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from morph3d.cli import main
from morph3d.errors import Morph3dError
from morph3d.evaluate.measures import (
    POSE_POINTS,
    POSE_TEMPLATE_MM,
    PSNR_CAP_DB,
    FaceMeasures,
    FrameRecord,
    appearance_metrics,
    face_appearance,
    face_hull_mask,
    gaze_offset,
    head_pose_deg,
)
from morph3d.evaluate.metrics import jitter_by_region, landmark_jitter, pearson
from morph3d.evaluate.runner import evaluate

# ------------------------------------------------------------------------ synthetic checks


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Model-space rotation for the documented signs (degrees): yaw turns the nose toward
    +x (image right), pitch lifts it (+y), roll is counter-clockwise as seen by the viewer."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    # a positive rotation about x moves +z toward -y (nose down): lift with -pitch
    rx = np.array([[1, 0, 0], [0, np.cos(-p), -np.sin(-p)], [0, np.sin(-p), np.cos(-p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def _projected_ibug68(yaw: float, pitch: float, roll: float,
                      size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """The pose template rotated and projected by the camera `head_pose_deg` assumes."""
    h, w = size
    focal = max(h, w)
    points = POSE_TEMPLATE_MM @ _rotation(yaw, pitch, roll).T
    depth = 600.0 - points[:, 2]  # the face 60 cm in front of the camera, looking at it
    xy = np.stack([(w - 1) / 2 + focal * points[:, 0] / depth,
                   (h - 1) / 2 - focal * points[:, 1] / depth], axis=1)
    ibug68 = np.zeros((68, 2))
    ibug68[list(POSE_POINTS)] = xy
    return ibug68


@pytest.mark.parametrize("angles", [(0, 0, 0), (25, 0, 0), (0, 15, 0), (0, 0, -20),
                                    (-30, -10, 12)])
def test_head_pose_recovers_known_angles_and_signs(angles):
    ibug68 = _projected_ibug68(*angles)
    np.testing.assert_allclose(head_pose_deg(ibug68, (480, 640)), angles, atol=1e-3)


def test_head_pose_sign_conventions_in_the_image():
    nose, left_eye, right_eye = (POSE_POINTS.index(i) for i in (30, 36, 45))
    turned = _projected_ibug68(25, 0, 0)[list(POSE_POINTS)]
    frontal = _projected_ibug68(0, 0, 0)[list(POSE_POINTS)]
    assert turned[nose, 0] - turned[[left_eye, right_eye], 0].mean() > 10  # nose to the right
    tilted = _projected_ibug68(0, 0, 20)[list(POSE_POINTS)]
    # counter-clockwise in the image: the image-right eye rises (smaller y)
    assert tilted[right_eye, 1] < tilted[left_eye, 1]
    lifted = _projected_ibug68(0, 20, 0)[list(POSE_POINTS)]
    eyes_to_nose = lambda p: p[nose, 1] - p[[left_eye, right_eye], 1].mean()  # noqa: E731
    assert eyes_to_nose(lifted) < eyes_to_nose(frontal)  # looking up shortens it


def test_pearson_is_nan_safe():
    assert pearson([0.2, 0.2, 0.2], [0.2, 0.2, 0.2]) == 1.0
    assert math.isnan(pearson([0.2, 0.2, 0.2], [0.1, 0.2, 0.3]))
    assert math.isnan(pearson([0.5], [0.4]))  # one point
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 5], [2, 4, 6, 10]) == pytest.approx(1.0)


def _face(points: np.ndarray) -> FaceMeasures:
    return FaceMeasures(box=np.zeros(4), ibug68=points, pose_deg=np.zeros(3), mar=0.0,
                        ear=0.0, gaze=np.zeros(2), iod=50.0)


def test_jitter_zero_for_same_motion_or_constant_offset_and_positive_for_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 400, (68, 2))
    track = [base + [3.0 * t, np.sin(t)] for t in range(10)]  # the original moves

    def records(other):
        return [FrameRecord(index=t, original_faces=1, output_faces=1, original=_face(o),
                            output=_face(s))
                for t, (o, s) in enumerate(zip(track, other, strict=True))]

    assert landmark_jitter(records(track), "output")[0] == 0.0
    shifted = [p + [5.0, -2.0] for p in track]  # a constant offset is not jitter
    assert landmark_jitter(records(shifted), "output")[0] == pytest.approx(0.0, abs=1e-12)
    noisy = [p + rng.normal(0, 1.0, p.shape) for p in track]
    value, per_pair = landmark_jitter(records(noisy), "output")
    # one-pixel noise per frame: |n1 - n0| ~ 1.77 px on average, over an iod of 50 px
    assert 0.02 < value < 0.05 and len(per_pair) == 9
    # a frame without the output face breaks the pairs around it
    broken = records(noisy)
    broken[4].output = None
    assert len(landmark_jitter(broken, "output")[1]) == 7
    # noise on the mouth's points alone shows in the mouth region alone
    mouth_noisy = [p.copy() for p in track]
    for p in mouth_noisy:
        p[48:68] += rng.normal(0, 1.0, (20, 2))
    regions = jitter_by_region(records(mouth_noisy), "output")
    assert set(regions) == {"jaw", "brows", "nose", "eyes", "mouth"}
    assert regions["mouth"] > 0.02 and regions["jaw"] == regions["eyes"] == 0.0
    assert landmark_jitter(records(mouth_noisy), "output")[0] == pytest.approx(
        regions["mouth"] * 20 / 68)


def test_gaze_offset_in_eye_widths():
    mesh = np.zeros((478, 2))
    mesh[[33, 133, 362, 263]] = [[100, 200], [140, 200], [180, 200], [220, 200]]
    mesh[468], mesh[473] = [120, 200], [200, 200]  # irises centred
    np.testing.assert_allclose(gaze_offset(mesh), [0, 0], atol=1e-12)
    mesh[468], mesh[473] = [130, 204], [210, 204]  # a quarter eye width right, 0.1 down
    np.testing.assert_allclose(gaze_offset(mesh), [0.25, 0.1], atol=1e-12)


def test_eval_target_face_is_checked_before_any_work(tmp_path, capsys):
    """`morph3d eval --target-face` takes the swap's grammar and fails in one line."""

    for name in ("source.jpg", "target.mp4", "output.mp4"):
        (tmp_path / name).write_bytes(b"not media")
    args = ["eval", "--source", str(tmp_path / "source.jpg"), "--target",
            str(tmp_path / "target.mp4"), "--output", str(tmp_path / "output.mp4")]
    assert main([*args, "--target-face", "biggest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("morph3d: error: target face takes largest, N") and "\n" not in err

def _face_picture() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut (a real face with skin, hair and fabric texture) and 68
    points whose jaw + brow part rings her face (the other points are not used by the
    appearance metrics)."""
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut())
    angles = np.linspace(0.0, np.pi, 17)  # jaw: ear to ear through the chin
    jaw = np.stack([220 + 60 * np.cos(angles), 110 + 80 * np.sin(angles)], 1)
    brows = np.stack([np.linspace(170, 270, 10), np.full(10, 85.0)], 1)
    points = np.zeros((68, 2))
    points[:17], points[17:27] = jaw, brows
    return rgb, points


def test_face_hull_mask_is_the_jaw_and_brow_outline():
    rgb, points = _face_picture()
    mask = face_hull_mask(points, rgb.shape[:2])
    assert mask[150, 220] and not mask[60, 220] and not mask[150, 100]
    points[27:] = [0.0, 0.0]  # the inner points (here far away) never widen it
    np.testing.assert_array_equal(face_hull_mask(points, rgb.shape[:2]), mask)
    points[3] = np.nan
    assert not face_hull_mask(points, rgb.shape[:2]).any()


def test_appearance_of_the_original_against_itself():
    rgb, points = _face_picture()
    scores = face_appearance(rgb, rgb.copy(), points)
    assert scores == {"face_ssim": 1.0, "face_psnr": PSNR_CAP_DB, "detail_ratio": 1.0,
                      "detail_ratio_relative": 1.0, "face_lab_delta": 0.0}


def test_appearance_blur_lowers_ssim_and_detail():
    rgb, points = _face_picture()
    light = cv2.GaussianBlur(rgb, (0, 0), 1.0)
    heavy = cv2.GaussianBlur(rgb, (0, 0), 3.0)
    a, b = face_appearance(rgb, light, points), face_appearance(rgb, heavy, points)
    assert 0 < b["face_ssim"] < a["face_ssim"] < 0.99
    assert 0 < b["detail_ratio"] < a["detail_ratio"] < 0.9
    assert 0 < b["detail_ratio_relative"] < a["detail_ratio_relative"] < 0.9
    assert b["face_psnr"] < a["face_psnr"] < PSNR_CAP_DB
    assert a["face_lab_delta"] < 1.0  # a blur keeps the mean colour


def test_appearance_colour_shift_raises_lab_delta_only():
    rgb, points = _face_picture()
    warmer = np.clip(rgb.astype(np.int16) + [12, 0, -12], 0, 255).astype(np.uint8)
    darker = (rgb.astype(np.float32) * 0.8).round().astype(np.uint8)
    a, b = face_appearance(rgb, warmer, points), face_appearance(rgb, darker, points)
    assert a["face_lab_delta"] > 5 and b["face_lab_delta"] > 5
    # a colour shift keeps the grey structure: SSIM stays high, the detail changes little
    assert a["face_ssim"] > 0.97 and 0.95 < a["detail_ratio"] < 1.05
    # a darker face scales its texture with its level: the relative ratio does not count it
    assert b["detail_ratio"] < 0.85 and abs(b["detail_ratio_relative"] - 1) < 0.03
    # the change outside the face does not count
    outside = rgb.copy()
    mask = face_hull_mask(points, rgb.shape[:2])
    outside[~mask] = 255 - outside[~mask]
    scores = appearance_metrics(rgb, outside, mask)
    assert scores["face_lab_delta"] == 0.0 and scores["face_psnr"] == PSNR_CAP_DB


def test_appearance_resamples_an_output_of_another_size():
    rgb, points = _face_picture()
    half = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
    scores = face_appearance(rgb, half, points)
    assert 0.5 < scores["face_ssim"] < 0.99 and scores["detail_ratio"] < 0.95
    with pytest.raises(ValueError):
        appearance_metrics(rgb, half, face_hull_mask(points, rgb.shape[:2]))


# ------------------------------------------------------------------------ real media


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_original_against_itself_scores_no_change(media_dir, tmp_path, capsys):
    out_json, plots = tmp_path / "self.json", tmp_path / "plots"
    code, out, err = _run_cli(
        ["--source", str(media_dir / "mark.jpg"), "--target", str(media_dir / "orig.webm"),
         "--output", str(media_dir / "orig.webm"), "--max-frames", "12",
         "--json", str(out_json), "--plots", str(plots)], capsys)
    assert code == 0, err
    assert "id_dist_target 0.000" in out
    result = json.loads(out_json.read_text())
    assert result["frames"] == 12 and result["coverage"] == 1.0
    assert result["id_dist_target"] == 0.0
    assert result["id_dist_source"] == result["id_dist_source_vs_original"] > 0.6
    for key in ("pose_mae_deg", "pose_yaw_bias_deg", "pose_mae_deg_offset_removed",
                "mar_mad", "ear_mad", "gaze_err", "jitter_added"):
        assert result[key] == 0.0, key
    assert all(v == 0.0 for v in result["jitter_added_regions"].values())
    assert result["mar_corr"] == 1.0 and result["ear_corr"] == 1.0
    assert result["face_ssim"] == 1.0 and result["detail_ratio"] == 1.0
    assert result["face_lab_delta"] == 0.0 and result["face_psnr"] == PSNR_CAP_DB
    assert "face_ssim 1.000" in out and "detail_ratio 1.000" in out
    assert all(row["face_ssim"] == 1.0 for row in result["per_frame"])
    # the H.264 re-encode loses a little, and that shows
    floor = result["noise_floor"]
    assert 0.8 < floor["face_ssim"] < 1.0 and floor["face_lab_delta"] < 1.0
    assert result["jitter_original"] > 0
    # an honest H.264 re-encode moves the detected landmarks a little, not nothing
    assert 0 < result["jitter_noise_floor"] < 0.1
    assert result["noise_floor"]["coverage"] == 1.0
    assert len(result["per_frame"]) == 12
    assert [row["index"] for row in result["per_frame"]] == list(range(12))
    for name in ("identity", "expression", "pose", "trajectory", "contact_sheet"):
        image = cv2.imread(str(plots / f"{name}.png"))
        assert image is not None and image.shape[0] > 100, name


def test_still_images_pair_as_one_frame_and_json_has_no_nan(media_dir, tmp_path):
    from morph3d.evaluate.metrics import write_json

    result = evaluate(media_dir / "aligned_source1.png", media_dir / "aligned_target1.png",
                      media_dir / "aligned_target1.png")
    assert result["frames"] == 1 and result["frames_matched"] == 1
    assert result["id_dist_target"] == 0.0
    assert math.isnan(result["jitter_added"]) and result["noise_floor"] is None
    assert math.isnan(result["mar_corr"])  # one frame: no correlation
    path = tmp_path / "r.json"
    write_json(result, path)
    text = path.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["jitter_added"] is None and loaded["per_frame"][0]["id_dist_target"] == 0.0


def test_appearance_on_a_real_frame_blurred_and_tinted(media_dir, tmp_path):
    from morph3d.io.images import read_image, write_image

    target = media_dir / "aligned_target1.png"
    rgb = read_image(target)
    blurred, tinted = tmp_path / "blurred.png", tmp_path / "tinted.png"
    write_image(blurred, cv2.GaussianBlur(rgb, (0, 0), 2.0))
    write_image(tinted, np.clip(rgb.astype(np.int16) + [15, 5, -10], 0, 255).astype(np.uint8))
    source = media_dir / "aligned_source1.png"
    same = evaluate(source, target, target)
    blur = evaluate(source, target, blurred)
    tint = evaluate(source, target, tinted)
    assert same["face_ssim"] == 1.0 and same["face_lab_delta"] == 0.0
    assert blur["face_ssim"] < 0.95 and blur["detail_ratio"] < 0.8
    assert blur["face_lab_delta"] < 1.0
    assert tint["face_lab_delta"] > 5.0 and tint["face_ssim"] > 0.95


def test_blank_output_fails_with_one_line(media_dir, tmp_path, capsys):
    from morph3d.io.media import probe_video
    from morph3d.io.video_writer import VideoWriter

    blank = tmp_path / "blank.mkv"
    info = probe_video(media_dir / "orig.webm")
    with VideoWriter(blank, info) as writer:
        for i in range(6):
            writer.write(np.zeros((info.height, info.width, 3), np.uint8), i)
    code, _, err = _run_cli(
        ["--source", str(media_dir / "mark.jpg"), "--target", str(media_dir / "orig.webm"),
         "--output", str(blank), "--max-frames", "4", "--no-noise-floor"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morph3d: error: no face matching")
    assert "Traceback" not in err


def test_faceless_inputs_fail_clearly(media_dir, tmp_path):
    from morph3d.io.images import write_image

    grey = tmp_path / "grey.png"
    write_image(grey, np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(Morph3dError, match="no face matching"):
        evaluate(media_dir / "aligned_source1.png", media_dir / "aligned_target1.png", grey)
    with pytest.raises(Morph3dError, match="no face found in the source"):
        evaluate(grey, media_dir / "aligned_target1.png", media_dir / "aligned_target1.png")
    with pytest.raises(Morph3dError, match="no face found in any"):
        evaluate(media_dir / "aligned_source1.png", grey, grey)
    with pytest.raises(Morph3dError, match="not found"):
        evaluate(media_dir / "aligned_source1.png", tmp_path / "missing.mp4", grey)


@pytest.fixture(scope="module")
def peer_first_frames(media_dir) -> dict:
    """The peer method's swap of mark.jpg onto orig.webm, first 20 frames, one worker."""
    return evaluate(media_dir / "mark.jpg", media_dir / "orig.webm",
                    media_dir / "ghost_mark_on_orig.webm", max_frames=20, noise_floor=False)


def test_peer_swap_scores_in_a_sane_range(peer_first_frames):
    result = peer_first_frames
    assert result["frames"] == 20 and result["coverage"] == 1.0
    # the peer scores about 0.42-0.49 on full clips; the original is another person
    assert 0.35 < result["id_dist_source"] < 0.55
    assert result["id_swap_rate"] > 0.9
    assert result["id_dist_source_vs_original"] > 0.6
    assert result["id_dist_target"] > 0.5  # the identity really changed
    assert 0 < result["pose_mae_deg_offset_removed"] <= result["pose_mae_deg"] < 15
    assert result["jitter_added"] > 0 and 0 < result["gaze_err"] < 0.3


def test_two_workers_give_identical_numbers(media_dir, peer_first_frames):
    two = evaluate(media_dir / "mark.jpg", media_dir / "orig.webm",
                   media_dir / "ghost_mark_on_orig.webm", max_frames=20, noise_floor=False,
                   workers=2)
    one = peer_first_frames
    assert two["settings"]["workers"] == 2
    assert json.dumps(two["per_frame"]) == json.dumps(one["per_frame"])
    for key, value in one.items():
        if key not in ("seconds", "seconds_per_frame", "settings", "per_frame"):
            assert json.dumps(two[key]) == json.dumps(value), key


def test_json_into_a_missing_folder_fails_cleanly(tmp_path):
    from morph3d.evaluate.metrics import write_json

    with pytest.raises(Morph3dError):
        write_json({"a": 1}, tmp_path / "no" / "such" / "dir.json")
    assert list(tmp_path.iterdir()) == []
