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

a   today: the photo's identity and completed texture, the actor's SH relit to the photo's
    ambient level (`FaceRenderer.relight`), 256 px crop + x2 super-resolver, default compositor.
b   the clip's own fit of frame k as the source: the clip's identity, and a texture unprojected
    through the clip's fit of frame k (same photometric fit, opening hiding and completion as
    the photo's): photo fit and clip fit no longer disagree.
c   the photo's texture on the clip's identity (geometry from the clip, texture from the photo).
d1  colour matching off; d2 the photo's own SH instead of the relit actor SH; d3 both.
e1  256 px, bicubic x2 (no super-resolver); e2 rendered at the face's own pixel size (no x2).
f*  texture round trips, no compositor (render pasted by its coverage): a fit's texture
    rendered with that same fit onto frame k at full resolution. f0 the photo fit, its
    completed texture (what the swap uses); f1 the texels the photo saw as unprojected (no
    hiding of the eye and mouth openings; the unseen ones from f0); f2 the same unprojected
    at 1024 texels instead of 512; fb the clip fit's texture of variant b.
g1  the render's eyes (no `keep_actor_eyes`); g2 the render's mouth (no `keep_actor_mouth`);
    g3 both.
h1  hard mask edge (feather 0); h2 twice the feather.
i   occluder cut and double-brow removal off.
z   combinations: z0 b + d2 (z0n without colour matching), z3 d2 + e2, z1 b + d2 + e2,
    z2 z1 + g3.
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
    upscaler: Any
    groups: Any  # V x regions one-hot (torch)
    target: Path


def read_frame(path: Path, index: int) -> np.ndarray:
    from morph3d.io.media import iter_frames

    for frame in iter_frames(path, index, index + 1):
        return frame.rgb
    sys.exit(f"probe_roundtrip: {path.name} has no frame {index}")


def load_context(clip: str, k: int, max_frames: int | None, work_dir: Path,
                 out_dir: Path) -> Context:
    import torch

    from fitting.faces import detect_faces
    from morph3d.io.images import write_image
    from morph3d.model.registry import load_model
    from morph3d.swap.driver import make_upscaler
    from morph3d.swap.fits import fit_clip, fit_source
    from morph3d.swap.options import SwapOptions, SwapSummary
    from morph3d.swap.window import REGION_CHANNELS

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
    summary = SwapSummary(output=str(out_dir / "probe.mp4"))
    model = load_model("default")
    with torch.enable_grad():
        source_fit = fit_source([source], model, options, summary)
        clip_fit = fit_clip(target, model, options, summary)
    print(f"[probe] fits: cached {summary.cached}", flush=True)
    faces = detect_faces(frame, "mediapipe")
    best = int(np.argmax(faces.areas()))
    detected = {s: np.asarray(v[best], np.float64) for s, v in faces.landmarks.items()}
    channels = np.stack([model.region(n) for n in REGION_CHANNELS], 1).astype(np.float32)
    return Context(model=model, frame=frame, k=k, clip_fit=clip_fit, source_fit=source_fit,
                   eval_ibug68=detected["ibug68"], detected=detected,
                   upscaler=make_upscaler(options, summary), groups=torch.from_numpy(channels),
                   target=target)


# --------------------------------------------------------------------------------------------
# The pieces, run on frame k
# --------------------------------------------------------------------------------------------


def swap_frame(ctx: Context, *, identity: np.ndarray, texture: np.ndarray,
               ambient: np.ndarray, sh: np.ndarray | None = None, work_resolution: int = 256,
               upscaler: Any = "default", config: Any = None) -> np.ndarray:
    """Frame k through the swap's render + composite stages (`FaceRenderer.render`,
    `FaceCompositor.process`) with the given source identity / texture / ambient level.
    `sh`: render under these SH instead of `FaceRenderer.relight(actor SH)`."""
    import torch

    from morph3d.composite.compositor import FaceCompositor, FrameInputs
    from morph3d.swap.renderer import FaceRenderer

    renderer = FaceRenderer(ctx.model, np.asarray(identity, np.float32),
                            torch.from_numpy(np.ascontiguousarray(texture, np.float32)),
                            ctx.groups, work_resolution, None,
                            ctx.upscaler if upscaler == "default" else upscaler,
                            np.asarray(ambient, np.float32))
    if sh is not None:
        fixed = np.asarray(sh, np.float32)
        renderer.relight = lambda _actor_sh: fixed  # type: ignore[method-assign]
    f, k = ctx.clip_fit.faces, ctx.k
    with torch.inference_mode():
        rendered = renderer.render(ctx.clip_fit.camera, f.rotation[k], f.translation[k],
                                   f.expression[k], f.sh[k], ctx.frame.shape[:2])
    lms = ctx.clip_fit.landmarks
    inputs = FrameInputs(frame=ctx.frame, render=rendered["image"],
                         coverage=rendered["coverage"],
                         actor_landmarks={s: lms[s][k] for s in lms},
                         swapped_landmarks={"ibug68": rendered["ibug68"],
                                            "mediapipe478": rendered["mediapipe478"]},
                         regions=rendered["regions"], window=rendered["window"])
    out, _ = FaceCompositor(config).process(inputs)
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
                                landmarks=ctx.detected, backend="mediapipe", corrective=False)
    finally:
        FL.fit_lighting_and_texture = original
    raw, seen = photo.identity.texture, photo.identity.confidence > 0
    filled = cv2.resize(np.asarray(ctx.source_fit.identity.texture, np.float32),
                        raw.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    return np.where(seen[..., None], raw, np.clip(filled, 0, 1)).astype(np.float32)


def clip_fit_texture(ctx: Context) -> tuple[Any, np.ndarray]:
    """Variant b's source: a one-frame fit with the clip's identity, pose, expression and
    camera of frame k, its SH and texture fitted on frame k as `fit_photo` does, then the
    swap's opening hiding and completion (`morph3d.swap.fits.fit_source`'s steps)."""
    import torch

    from fitting import fit as F
    from fitting import lighting as FL
    from fitting.params import FaceParams, Identity, VideoFit
    from morph3d.neural.completion import complete_texture
    from morph3d.swap.fits import hide_forehead_occluders, hide_openings

    c, k = ctx.clip_fit, ctx.k
    identity = np.asarray(c.identity.coefficients, np.float64)
    state = F.FrameState(np.asarray(c.faces.rotation[k], np.float64),
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
    hide_openings(fit, ctx.model, [ctx.detected])
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

    from morph3d.composite.compositor import CompositorConfig
    from morph3d.evaluate.measures import face_appearance
    from morph3d.evaluate.plots import label_cell
    from morph3d.io.images import write_image

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
    photo_id, photo_tex = src.identity.coefficients, src.identity.texture
    photo_amb, photo_sh = src.faces.sh[0, 0], src.faces.sh[0]
    source_png = work_dir.parent / f"roundtrip_{args.clip}_source_f{k}.png"

    print("[probe] fitting variant b's texture (clip geometry)", flush=True)
    clip_src, _ = clip_fit_texture(ctx)
    clip_id, clip_tex = clip_src.identity.coefficients, clip_src.identity.texture
    clip_amb, clip_sh = clip_src.faces.sh[0, 0], clip_src.faces.sh[0]
    side = face_side(ctx, photo_id)
    print(f"[probe] face crop side at frame {k}: {side} px (working size 256)", flush=True)

    cfg = CompositorConfig()
    base = dict(identity=photo_id, texture=photo_tex, ambient=photo_amb)
    b = dict(identity=clip_id, texture=clip_tex, ambient=clip_amb)
    variants: list[tuple[str, str, Any]] = [
        ("a", "today", lambda: swap_frame(ctx, **base)),
        ("b", "clip's fit of frame k as the source (identity + texture)",
         lambda: swap_frame(ctx, **b)),
        ("c", "photo texture on the clip's identity",
         lambda: swap_frame(ctx, identity=clip_id, texture=photo_tex, ambient=photo_amb)),
        ("d1", "colour matching off",
         lambda: swap_frame(ctx, **base, config=dataclasses.replace(cfg, colour_match=False))),
        ("d2", "photo's own SH (no relighting)", lambda: swap_frame(ctx, **base, sh=photo_sh)),
        ("d3", "d1 + d2", lambda: swap_frame(
            ctx, **base, sh=photo_sh, config=dataclasses.replace(cfg, colour_match=False))),
        ("e1", "256 px, bicubic x2 (no SR)", lambda: swap_frame(ctx, **base, upscaler=None)),
        ("e2", f"rendered at the face's size ({side} px, no SR)",
         lambda: swap_frame(ctx, **base, work_resolution=side, upscaler=None)),
        ("f0", "texture round trip: photo fit, completed 512 texture, no compositor",
         lambda: texture_round_trip(ctx, src, 0, photo_tex)),
        ("f1", "texture round trip: photo fit, 512 texture, seen texels unhidden",
         lambda: texture_round_trip(ctx, src, 0, raw_photo_texture(ctx, source_png, 512))),
        ("f2", "texture round trip: photo fit, 1024 texture, seen texels unhidden",
         lambda: texture_round_trip(ctx, src, 0, raw_photo_texture(ctx, source_png, 1024))),
        ("fb", "texture round trip: clip fit (b's texture)",
         lambda: texture_round_trip(ctx, clip_src, 0, clip_tex)),
        ("g1", "render's eyes (keep_eyes off)",
         lambda: swap_frame(ctx, **base, config=dataclasses.replace(cfg, keep_eyes=False))),
        ("g2", "render's mouth (keep_mouth off)",
         lambda: swap_frame(ctx, **base, config=dataclasses.replace(cfg, keep_mouth=False))),
        ("g3", "g1 + g2", lambda: swap_frame(ctx, **base, config=dataclasses.replace(
            cfg, keep_eyes=False, keep_mouth=False))),
        ("h1", "hard mask edge (feather 0)",
         lambda: swap_frame(ctx, **base, config=dataclasses.replace(cfg, feather=0.0))),
        ("h2", f"feather x2 ({2 * cfg.feather:g} IOD)", lambda: swap_frame(
            ctx, **base, config=dataclasses.replace(cfg, feather=2 * cfg.feather))),
        ("i", "occluder cut + double-brow removal off", lambda: swap_frame(
            ctx, **base, config=dataclasses.replace(cfg, occluders=False, remove_brows=False))),
        ("z0", "b + d2 (clip fit with its own SH)",
         lambda: swap_frame(ctx, **b, sh=clip_sh)),
        ("z0n", "z0, colour matching off", lambda: swap_frame(
            ctx, **b, sh=clip_sh, config=dataclasses.replace(cfg, colour_match=False))),
        ("z3", "d2 + e2 (photo fit, its own SH, face-size render)", lambda: swap_frame(
            ctx, **base, sh=photo_sh, work_resolution=side, upscaler=None)),
        ("z1", "b + d2 + e2 (clip fit, its own SH, face-size render)", lambda: swap_frame(
            ctx, **b, sh=clip_sh, work_resolution=side, upscaler=None)),
        ("z2", "z1 + g3 (render's eyes and mouth)", lambda: swap_frame(
            ctx, **b, sh=clip_sh, work_resolution=side, upscaler=None,
            config=dataclasses.replace(cfg, keep_eyes=False, keep_mouth=False))),
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
