"""Where the round trip loses: frame k of a clip swapped back into itself, one stage at a time.

    python tools/probe_roundtrip.py [--clip nggyup|orig] [--frame K] [--max-frames N]
                                    [--work-dir DIR] [--out-dir out/roundtrip/probe]

The source photo is frame k of the clip written as PNG (the same file `tools/bench_swap.py`
writes for its round-trip cases, so with the same --work-dir the clip and photo fits come
from that run's cache). A perfect pipeline gives frame k back; each variant below changes one
stage and is scored on frame k with `morph3d.evaluate.measures.face_appearance` (face SSIM / PSNR /
detail ratio / Lab delta inside the original's jaw+brow hull, the evaluator's points).
Frames are scored as composited, before H.264 encoding (the encoder alone is its own row), and
with a fresh compositor (no moving averages from earlier frames).

Variants (the pipeline itself is not changed: the pieces of `morph3d.swap.driver` and
`morph3d.composite` are called with other inputs or `CompositorConfig` knobs):

a   today: the identity transfer onto frame k's own pixels (`FaceRenderer` with the photo
    fit, the clip fit and the photo), the swap's compositor.
f*  texture round trips, no compositor (render pasted by its coverage): a fit's texture
    rendered with that same fit onto frame k at full resolution. f0 the photo fit, its
    completed texture (what the swap uses); f1 the texels the photo saw as unprojected (no
    hiding of the eye and mouth openings; the unseen ones from f0); f2 the same unprojected
    at 1024 texels instead of 512; fb a one-frame fit with the clip's geometry of frame k,
    its texture unprojected and completed as the photo's.
h1  hard mask edge (feather 0); h2 twice the feather.
i   occluder cut off.
enc the original frame k through H.264 at the swap's CRF 14 alone (what the encoder costs).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
sys.path.insert(0, str(ROOT))

CLIPS = {"nggyup": ("nggyup.mp4", 150, 180), "orig": ("orig.webm", 28, None)}
CELL_PX = 200


# --------------------------------------------------------------------------------------------
# Context: the frame, the fits, the evaluator's points
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    model: Any
    frame: np.ndarray  # frame k, uint8 RGB
    k: int
    clip_fit: Any
    source_fit: Any
    eval_ibug68: np.ndarray  # the evaluator's 68 points on frame k
    detected: dict[str, np.ndarray]  # mediapipe 478 + derived 68 on frame k (float64)
    renderer: Any  # the swap's FaceRenderer for this photo and clip
    target: Path


def read_frame(path: Path, index: int) -> np.ndarray:
    from morph3d.io.media import iter_frames

    for frame in iter_frames(path, index, index + 1):
        return frame.rgb
    sys.exit(f"probe_roundtrip: {path.name} has no frame {index}")


def load_context(clip: str, k: int, max_frames: int | None, work_dir: Path,
                 out_dir: Path) -> Context:
    import torch

    from fitting.detection import detect_faces
    from morph3d.io.images import write_image
    from morph3d.model.registry import load_model
    from morph3d.swap.fits import find_source_faces, fit_clip, fit_source
    from morph3d.swap.options import SwapOptions
    from morph3d.swap.renderer import FaceRenderer

    target = MEDIA / CLIPS[clip][0]
    if not target.is_file():
        sys.exit(f"probe_roundtrip: {target} is missing (needs ../shared/media)")
    frame = read_frame(target, k)
    # the name bench_swap gives it: same bytes, same content key, cached fits
    source = work_dir.parent / f"roundtrip_{clip}_source_f{k}.png"
    if not source.is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        write_image(source, frame)
    options = SwapOptions(max_frames=max_frames, work_dir=work_dir, quiet=True)
    model = load_model("default")
    with torch.enable_grad():
        clip_fit, clip_runs = fit_clip(target, model, options)
        source_fit, source_run = fit_source([source], model, options,
                                            find_source_faces([source], options),
                                            clip_fit.identity.coefficients)
    cached = [run.name for run in (*clip_runs, source_run) if run.cached]
    print(f"[probe] fits: cached {cached}", flush=True)
    faces = detect_faces(frame, "mediapipe")
    best = int(np.argmax(faces.areas()))
    detected = {s: np.asarray(v[best], np.float64) for s, v in faces.landmarks.items()}
    renderer = FaceRenderer.create(model, source_fit, clip_fit, frame, options, target)
    return Context(model=model, frame=frame, k=k, clip_fit=clip_fit, source_fit=source_fit,
                   eval_ibug68=detected["ibug68"], detected=detected, renderer=renderer,
                   target=target)


# --------------------------------------------------------------------------------------------
# The pieces, run on frame k
# --------------------------------------------------------------------------------------------


def swap_frame(ctx: Context, config: Any = None) -> np.ndarray:
    """Frame k through the swap's render + composite stages (`FaceRenderer.render`,
    `FaceCompositor.process`), with `config` (default: the swap's) for the compositor."""
    import torch

    from morph3d.composite.compositor import FaceCompositor, FrameInputs
    from morph3d.swap.transfer import compositor_config

    f, k = ctx.clip_fit.faces, ctx.k
    lms = ctx.clip_fit.landmarks
    actor = {s: lms[s][k] for s in lms}
    with torch.inference_mode():
        rendered = ctx.renderer.render(ctx.clip_fit.camera, f.rotation[k], f.translation[k],
                                       f.expression[k], ctx.frame, actor)
    inputs = FrameInputs(frame=ctx.frame, render=rendered["image"],
                         coverage=rendered["coverage"], actor_landmarks=actor,
                         swapped_landmarks={"ibug68": rendered["ibug68"],
                                            "mediapipe478": rendered["mediapipe478"]},
                         regions=rendered["regions"], window=rendered["window"])
    out, _ = FaceCompositor(config or compositor_config()).process(inputs)
    return out


def face_side(ctx: Context, identity: np.ndarray) -> int:
    """The swap's crop side for frame k in frame pixels (`face_crop_box` of the projected
    478 points): rendering at this size needs no resampling of the crop."""
    import torch

    from morph3d.swap.window import face_crop_box

    f, k = ctx.clip_fit.faces, ctx.k
    ident = torch.from_numpy(np.asarray(identity, np.float32)[None])
    expr = torch.from_numpy(np.asarray(f.expression[k], np.float32)[None])
    with torch.no_grad():
        verts = ctx.model.vertices(ident, expr)
        cam = ctx.clip_fit.camera.to_camera(f.rotation[k], f.translation[k])
        lm478 = cam.project(ctx.model.landmarks(verts, "mediapipe478"))[0].numpy()
    return int(np.ceil(face_crop_box(lm478, ctx.frame.shape[:2])[2]))


def texture_round_trip(ctx: Context, fit: Any, index: int, texture: np.ndarray,
                       identity: np.ndarray | None = None) -> np.ndarray:
    """`texture` rendered with `fit`'s own frame `index` (pose, expression, SH, camera) onto
    frame k at full resolution, pasted by its antialiased coverage: what unproject -> UV ->
    render loses by itself."""
    import torch

    from render import render_mesh

    model = ctx.model
    f = fit.faces
    coeffs = fit.identity.coefficients if identity is None else identity
    ident = torch.from_numpy(np.asarray(coeffs, np.float32)[None])
    expr = torch.from_numpy(np.asarray(f.expression[index], np.float32)[None])
    with torch.no_grad():
        verts = model.vertices(ident, expr)
        cam = fit.camera.to_camera(f.rotation[index], f.translation[index])
        out = render_mesh(verts, model.triangles, cam,
                          texture_image=torch.from_numpy(np.ascontiguousarray(texture,
                                                                               np.float32)),
                          uv_coords=model.uv_coords, uv_triangles=model.uv_triangles,
                          sh_coeffs=torch.from_numpy(np.asarray(f.sh[index], np.float32)[None]))
    image = out.image[0].numpy().clip(0, 1)
    alpha = out.mask[0].numpy().clip(0, 1)
    base = ctx.frame.astype(np.float32) / 255.0
    return (np.clip(image * alpha + base * (1 - alpha), 0, 1) * 255 + 0.5).astype(np.uint8)


def raw_photo_texture(ctx: Context, source_png: Path, texture_size: int) -> np.ndarray:
    """The photo fit's texture as unprojected, without the opening hiding and completion, at
    `texture_size` texels (`fit_photo` with `fit_lighting_and_texture`'s texture size set):
    the texels the photo saw as they are, the others from the completed texture the swap
    uses (resized), so only the resolution and the hidden openings differ from f0."""
    import torch

    from fitting import lighting as FL
    from fitting import photo as FP
    from morph3d.io.images import read_image

    original = FL.fit_lighting_and_texture
    FL.fit_lighting_and_texture = functools.partial(original, texture_size=texture_size)
    try:
        with torch.enable_grad():
            photo = FP.fit_photo(read_image(source_png), ctx.model,
                                landmarks=ctx.detected, backend="mediapipe", corrective=False)[0]
    finally:
        FL.fit_lighting_and_texture = original
    raw, seen = photo.identity.texture, photo.identity.confidence > 0
    filled = cv2.resize(np.asarray(ctx.source_fit.identity.texture, np.float32),
                        raw.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    return np.where(seen[..., None], raw, np.clip(filled, 0, 1)).astype(np.float32)


def clip_fit_texture(ctx: Context) -> tuple[Any, np.ndarray]:
    """Variant fb's source: a one-frame fit with the clip's identity, pose, expression and
    camera of frame k, its SH and texture fitted on frame k as `fit_photo` does, then the
    swap's opening hiding and completion (`morph3d.swap.fits.fit_source`'s steps)."""
    import torch

    from fitting import lighting as FL
    from fitting import pose as FPose
    from fitting.params import FaceParams, Identity, VideoFit
    from morph3d.neural.completion import complete_texture
    from morph3d.swap.fits import hide_forehead_occluders, hide_openings

    c, k = ctx.clip_fit, ctx.k
    identity = np.asarray(c.identity.coefficients, np.float64)
    state = FPose.FrameState(np.asarray(c.faces.rotation[k], np.float64),
                             np.asarray(c.faces.translation[k], np.float64),
                             np.asarray(c.faces.expression[k], np.float64))
    with torch.enable_grad():
        states, texture, confidence = FL.fit_lighting_and_texture(
            ctx.model, [ctx.frame], identity, [state], [c.camera])
    faces = FaceParams.empty(1, ctx.model.num_expression)
    faces.rotation[0], faces.translation[0] = state.rotation, state.translation
    faces.expression[0], faces.sh[0], faces.valid[0] = state.expression, states[0].sh, True
    fit = VideoFit(identity=Identity(identity, texture, confidence), faces=faces,
                   camera=c.camera, model_name=ctx.model.name)
    hide_openings([fit], ctx.model, [ctx.detected])
    hide_forehead_occluders(fit, ctx.model)
    done, _ = complete_texture(fit.identity.texture, fit.identity.confidence, ctx.model,
                               "neural")
    fit.identity.texture = done.texture.astype(np.float32)
    return fit, texture


def encode_only(ctx: Context, crf: int = 14) -> np.ndarray:
    """Frame k through the swap's H.264 encoder (`VideoWriter`, CRF 14) and back."""
    from morph3d.io.media import iter_frames, probe_video
    from morph3d.io.video_writer import VideoWriter

    info = probe_video(ctx.target)
    with tempfile.TemporaryDirectory(prefix="probe-rt-") as tmp:
        path = Path(tmp) / "k.mp4"
        with VideoWriter(path, like=info, crf=crf) as writer:
            for i in range(3):  # a few frames: a one-frame stream is an unusual case
                writer.write(ctx.frame, index=i)
        return next(iter(iter_frames(path, 0, 1))).rgb


# --------------------------------------------------------------------------------------------
# Pictures and tables
# --------------------------------------------------------------------------------------------


def crop(ctx: Context, rgb: np.ndarray) -> np.ndarray:
    from fitting.faces import landmark_box
    from morph3d.evaluate.plots import face_crop

    return face_crop(rgb, landmark_box(ctx.detected["mediapipe478"]), CELL_PX, scale=1.3,
                     upscale=cv2.INTER_CUBIC)


def sheet(cells: list[np.ndarray], columns: int) -> np.ndarray:
    blank = np.zeros_like(cells[0])
    rows = [cells[i:i + columns] + [blank] * (columns - len(cells[i:i + columns]))
            for i in range(0, len(cells), columns)]
    return np.concatenate([np.concatenate(r, 1) for r in rows], 0)


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | what changes | face SSIM | face PSNR (dB) | detail ratio | "
            "Lab delta | SSIM vs a |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['what']} | {fmt(r['face_ssim'])} | "
                     f"{fmt(r['face_psnr'], 2)} | {fmt(r['detail_ratio'])} | "
                     f"{fmt(r['face_lab_delta'], 2)} | {r['gain']:+.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", choices=sorted(CLIPS), default="nggyup")
    parser.add_argument("--frame", type=int, help="frame k (default: 150 nggyup, 28 orig)")
    parser.add_argument("--max-frames", type=int,
                        help="frames of the clip fit (default: 180 nggyup, all of orig; "
                             "bench_swap's round-trip settings, so its cache is reused)")
    parser.add_argument("--work-dir", type=Path,
                        help="work directory (default out/roundtrip/work_<clip>_roundtrip)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "out" / "roundtrip" / "probe")
    args = parser.parse_args()

    import torch

    from morph3d.evaluate.measures import face_appearance
    from morph3d.evaluate.plots import label_cell
    from morph3d.io.images import write_image
    from morph3d.swap.transfer import compositor_config

    torch.set_num_threads(1)
    _, default_k, default_frames = CLIPS[args.clip]
    k = default_k if args.frame is None else args.frame
    max_frames = default_frames if args.max_frames is None else args.max_frames
    work_dir = (args.work_dir or ROOT / "out" / "roundtrip" / f"work_{args.clip}_roundtrip")
    work_dir = work_dir.resolve()
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = load_context(args.clip, k, max_frames, work_dir, out)
    src = ctx.source_fit
    photo_tex = src.identity.texture
    source_png = work_dir.parent / f"roundtrip_{args.clip}_source_f{k}.png"

    print("[probe] fitting variant fb's texture (clip geometry)", flush=True)
    clip_src, _ = clip_fit_texture(ctx)
    clip_tex = clip_src.identity.texture
    side = face_side(ctx, src.identity.coefficients)
    print(f"[probe] face crop side at frame {k}: {side} px (working size 256)", flush=True)

    cfg = compositor_config()
    variants: list[tuple[str, str, Any]] = [
        ("a", "today", lambda: swap_frame(ctx)),
        ("f0", "texture round trip: photo fit, completed 512 texture, no compositor",
         lambda: texture_round_trip(ctx, src, 0, photo_tex)),
        ("f1", "texture round trip: photo fit, 512 texture, seen texels unhidden",
         lambda: texture_round_trip(ctx, src, 0, raw_photo_texture(ctx, source_png, 512))),
        ("f2", "texture round trip: photo fit, 1024 texture, seen texels unhidden",
         lambda: texture_round_trip(ctx, src, 0, raw_photo_texture(ctx, source_png, 1024))),
        ("fb", "texture round trip: a one-frame fit with the clip's geometry",
         lambda: texture_round_trip(ctx, clip_src, 0, clip_tex)),
        ("h1", "hard mask edge (feather 0)",
         lambda: swap_frame(ctx, dataclasses.replace(cfg, feather=0.0))),
        ("h2", f"feather x2 ({2 * cfg.feather:g} IOD)",
         lambda: swap_frame(ctx, dataclasses.replace(cfg, feather=2 * cfg.feather))),
        ("i", "occluder cut off",
         lambda: swap_frame(ctx, dataclasses.replace(cfg, occluders=False))),
        ("enc", "the original through H.264 CRF 14 only", lambda: encode_only(ctx)),
    ]
    rows: list[dict[str, Any]] = []
    crops = [label_cell(crop(ctx, ctx.frame), f"original #{k}")]
    diffs = [label_cell(np.zeros_like(crops[0]), "|diff| x4")]
    for name, what, run in variants:
        print(f"[probe] {name}: {what}", flush=True)
        image = run()
        scores = face_appearance(ctx.frame, image, ctx.eval_ibug68)
        rows.append({"name": name, "what": what, **scores})
        write_image(out / f"{args.clip}_f{k}_{name}.png", image)
        c = crop(ctx, image)
        crops.append(label_cell(c, f"{name} ssim {scores['face_ssim']:.3f}"))
        d = np.clip(np.abs(c.astype(np.int16) - crops[0].astype(np.int16)) * 4, 0, 255)
        diffs.append(label_cell(d.astype(np.uint8), f"{name} |diff| x4"))
        print(f"        {json.dumps({k_: round(v, 4) for k_, v in scores.items()})}",
              flush=True)
    today = next(r for r in rows if r["name"] == "a")
    for r in rows:
        r["gain"] = r["face_ssim"] - today["face_ssim"]
    ordered = [today] + sorted((r for r in rows if r["name"] != "a"),
                               key=lambda r: -r["gain"])
    text = (f"{args.clip} frame {k} (clip fit over {max_frames or 'all'} frames; face crop "
            f"{side} px)\n\n" + table(ordered) + "\n")
    (out / f"{args.clip}_f{k}_table.md").write_text(text)
    write_image(out / f"{args.clip}_f{k}_variants.png", sheet(crops, 6))
    write_image(out / f"{args.clip}_f{k}_diffs.png", sheet(diffs, 6))
    (out / f"{args.clip}_f{k}.json").write_text(json.dumps(
        {"clip": args.clip, "frame": k, "max_frames": max_frames, "face_side_px": side,
         "rows": rows}, indent=1, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
