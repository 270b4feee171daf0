"""`morph3d fit PHOTO_OR_VIDEO`: fit the morphable model and write a summary, mesh or preview."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write_text


def register(subparsers: argparse._SubParsersAction, name: str = "fit") -> None:
    p = subparsers.add_parser(name, help="fit the 3D face model to a photo or a video")
    p.add_argument("input", help="photo or video")
    p.add_argument("--model", default="default", help="default | bfm | path to a .npz")
    p.add_argument("--export", help="write the fitted mesh (.glb, .obj or .ply)")
    p.add_argument("--json", help="write per-frame landmarks68 and head pose as JSON")
    p.add_argument("--save", help="write the fit itself (.npz, reloadable)")
    p.add_argument("--preview", help="write a side-by-side PNG: input | fitted mesh overlay")
    p.add_argument("--backend", default="mediapipe",
                   help="landmarks: mediapipe | dlib | dlib-cnn | face-alignment; photos also "
                        "dlib+mediapipe (the 68 points closest to iBUG annotations)")
    p.add_argument("--face", default="auto",
                   help="which face to fit: auto (the largest, the same face for every "
                   "backend), N (0 = largest), center, the face nearest pixel X,Y, or "
                   "REF.jpg (the face most like the one in that photo)")
    p.add_argument("--max-frames", type=int, default=None, help="videos: fit only the start")
    p.add_argument("--no-photometric", action="store_true", help="skip lighting and texture")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_fit)


def _write_atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text, parents=False)


def export_outputs(path: Path, frame_count: int = 1) -> list[Path]:
    """The files `--export path` writes for a fit of `frame_count` frames: an .obj brings
    its material and texture beside it; a .ply of several frames is a numbered sequence
    (`morph3d.io.export.ply_sequence_paths`)."""
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return [path, path.with_suffix(".mtl"), path.with_name(f"{path.stem}_texture.png")]
    if suffix == ".ply" and frame_count > 1:
        from morph3d.io.export import ply_sequence_paths

        return ply_sequence_paths(path, frame_count)
    return [path]


def fit_frame_count(source: Path, max_frames: int | None) -> int:
    """How many frames a fit of `source` has: 1 for a photo, else the video's frame count
    (probed; `InputError` for a file that is not media) up to `max_frames`."""
    from morph3d.io.images import is_image_path
    from morph3d.io.media import probe_video

    if is_image_path(source):
        return 1
    count = probe_video(source).frame_count
    return count if max_frames is None else max(1, min(count, max_frames))


def fit_inputs(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """The files a fit reads: the photo or video, a model file, a reference photo."""
    model_file = Path(args.model) if Path(args.model).is_file() else None
    return Path(args.input), model_file, face_reference(args)


def check_fit_paths(args: argparse.Namespace) -> int:
    """Everything about the paths that could only fail after the fit, checked before it.
    Returns the number of frames the fit will have as far as the export's file names need
    it (a video is probed only for a .ply export, whose sequence is named by frame)."""
    from morph3d.io.outputs import check_outputs

    source = Path(args.input)
    if not source.exists():
        raise InputError(f"input not found: {source}")
    if source.is_dir():
        raise InputError(f"input is a folder, not a file: {source}")
    frame_count = 1
    if args.export:
        from morph3d.io.export import SUFFIXES

        export = Path(args.export)
        if export.suffix.lower() not in SUFFIXES:
            raise InputError(f"cannot export '{export.name}': use a "
                               f"{', '.join(SUFFIXES)} file name")
        if export.suffix.lower() == ".ply":
            frame_count = fit_frame_count(source, args.max_frames)
    if args.preview:
        from morph3d.io.images import is_image_path

        if not is_image_path(args.preview):
            raise InputError(f"--preview must be an image file name (.png, .jpg, ...): "
                               f"{args.preview}")
    inputs = fit_inputs(args)
    reference = inputs[2]
    if reference is not None and not reference.is_file():
        raise InputError(f"reference photo not found: {reference}")
    check_outputs(inputs, fit_outputs(args, frame_count))
    return frame_count


def fit_outputs(args: argparse.Namespace, frame_count: int) -> list[Path | None]:
    """Every file the fit writes (None for options not given), for `frame_count` frames."""
    outputs: list[Path | None] = [Path(p) if p else None
                                  for p in (args.json, args.save, args.preview)]
    if args.export:
        outputs += export_outputs(Path(args.export), frame_count)
    return outputs


def face_choice(args: argparse.Namespace):
    """`--face` parsed (`fitting.choice` grammar; one face, or a reference photo)."""
    from fitting.choice import parse_face_choice

    return parse_face_choice(args.face, "--face", allow=("reference",))


def face_reference(args: argparse.Namespace) -> Path | None:
    choice = face_choice(args)
    return Path(choice.reference) if choice.reference is not None else None


def cmd_fit(args: argparse.Namespace) -> int:
    from fitting.photo import fit_photo, fit_summary
    from morph3d.io.images import is_image_path, read_image
    from morph3d.io.media import probe_video
    from morph3d.model.registry import load_model

    frame_count = check_fit_paths(args)
    source = Path(args.input)
    choice = face_choice(args)
    photometric = not args.no_photometric
    if is_image_path(source):
        from fitting.choice import choose_photo_face

        frame0 = read_image(source)  # InputError for unreadable files
        # The face is chosen here, once, among one detector's boxes: every backend fits it
        # (and a choice that matches no face fails before the model loads).
        chosen = choose_photo_face(frame0, args.backend, choice, str(source))
        model = load_model(args.model)
        fit = fit_photo(str(source), model, landmarks=chosen.landmarks, backend=args.backend,
                        photometric=photometric)[0]
        face = chosen.to_dict()
    else:
        from fitting.video import fit_video, video_landmarks
        from morph3d.io.media import iter_frames

        probe_video(source)  # InputError for non-media files
        model = load_model(args.model)
        select: str | np.ndarray = str(choice)
        if choice.rule == "reference":
            from fitting.choice import reference_embedding

            select = reference_embedding(choice.reference or "")
        # The face is chosen among one detector's tracks, whatever the backend; a reference
        # photo of someone not in the clip fails here (`fitting.people.select_track`).
        found = video_landmarks(source, args.backend, select, args.max_frames,
                                progress=not args.quiet)
        fit = fit_video(source, model, landmarks=found.points, backend=args.backend,
                        max_frames=args.max_frames, photometric=photometric,
                        progress=not args.quiet, scene_cut=found.scene_cut)
        frame0 = next(iter(iter_frames(source, stop=1))).rgb
        face = video_face(fit, str(choice) if choice.rule != "largest" else "auto",
                          found.faces_found)
    if fit_outputs(args, fit.num_frames) != fit_outputs(args, frame_count):
        # The fit has another frame count than the probe said (a header that lies): the
        # sequence's own file names get the same guard before anything is written.
        from morph3d.io.outputs import check_outputs

        check_outputs(fit_inputs(args), fit_outputs(args, fit.num_frames))
    summary = fit_summary(fit, model)
    summary["face"] = face
    if args.json:
        _write_atomic_text(Path(args.json), json.dumps(summary, indent=1))
    if args.save:
        fit.save(args.save)
    if args.export:
        from morph3d.io.export import export_fit

        export_fit(fit, model, args.export)
    if args.preview:
        write_preview(args.preview, frame0, fit, model)
    if not args.quiet:
        s = summary["frames"][0]
        extra = (f", {len(summary['faceless_frames'])} faceless frame(s)"
                 if summary["faceless_frames"] else "")
        print(f"fitted {fit.num_frames} frame(s) of {source.name}{extra}; first frame yaw "
              f"{s['yaw']:.1f} pitch {s['pitch']:.1f} roll {s['roll']:.1f} deg")
        if face.get("upright_turn_deg"):
            print(f"the photo lies sideways or upside down: its face was measured turned "
                  f"upright ({face['upright_turn_deg']} deg); the points are in the photo's "
                  f"own pixels")
        if face.get("faces_found") not in (None, 1):
            b = face["box"]
            which = "the largest" if face["choice"] == "auto" else f"face {face['choice']}"
            print(f"{face['faces_found']} faces found: fitted {which}, at x {b['x']:g}, y "
                  f"{b['y']:g} ({b['w']:g} x {b['h']:g} px)")
    return 0


def video_face(fit, choice: str, faces_found: int) -> dict:
    """Which face a video fit followed: the box (x, y top-left pixel, w, h pixels) of the
    landmarks it fitted in its first frame with a face. A clip's face is a track, chosen
    among the chooser's tracks (`fitting.people.choose_person`), not among one frame's boxes;
    `faces_found` counts the clip's people (tracks of one person joined)."""
    from fitting.choice import CHOOSER_BACKEND
    from fitting.faces import IBUG68

    points = fit.landmarks.get(IBUG68)
    face: dict = {"choice": choice, "detector": f"{CHOOSER_BACKEND} tracks",
                  "faces_found": int(faces_found), "box": None}
    if points is None:
        return face
    present = np.flatnonzero(np.isfinite(points).all(axis=(1, 2)))
    if len(present):
        p = points[present[0]].astype(np.float64)
        lo, hi = p.min(0), p.max(0)
        face["frame"] = int(present[0])
        face["box"] = {"x": round(float(lo[0]), 1), "y": round(float(lo[1]), 1),
                       "w": round(float(hi[0] - lo[0]), 1), "h": round(float(hi[1] - lo[1]), 1)}
    return face


def write_preview(path: str | os.PathLike, image: np.ndarray, fit, model, frame: int = 0
                  ) -> None:
    """input | input with the fitted mesh (shaded, half transparent) and its 68 landmarks."""
    import cv2
    import torch

    from fitting.model_arrays import vertex_positions
    from fitting.photo import projected_landmarks
    from morph3d.io.images import write_image
    from render.helpers import render_mesh

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, 2)
    img = img[..., :3].astype(np.uint8)
    f = fit.faces
    verts = vertex_positions(model, fit.identity.coefficients.astype(np.float64),
                             f.expression[frame].astype(np.float64), fit.identity.offset)
    camera = fit.camera.to_camera(f.rotation[frame], f.translation[frame])
    sh = torch.zeros(1, 9, 3)
    sh[0, 0], sh[0, 2] = 0.55, 0.45  # plain frontal light, to show the shape
    with torch.no_grad():
        out = render_mesh(torch.as_tensor(verts, dtype=torch.float32)[None],
                          model.triangles, camera, sh_coeffs=sh, antialias=True)
    shaded = np.clip(out.image[0].numpy(), 0, 1) * 255
    alpha = out.mask[0].numpy() * 0.6
    overlay = (img * (1 - alpha) + shaded * alpha).astype(np.uint8)
    for x, y in projected_landmarks(fit, model)[frame]:
        cv2.circle(overlay, (int(round(x)), int(round(y))), max(1, img.shape[1] // 300),
                   (255, 64, 64), -1, cv2.LINE_AA)
    write_image(path, np.concatenate([img, overlay], 1))
