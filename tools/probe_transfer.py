"""Probe: the identity transfer on the actor's pixels and its variants, single frames.

Cases: the round trip (a clip frame written as PNG is the source, swapped into the same clip
at that frame and at others: nggyup.mp4 frame 150 at `--frames`, orig.webm frame 10 at 10
and 30) and cross-identity swaps. For each, the transfer (`morph3d.swap.transfer`, as the swap runs
it) and the variants asked for (`TRANSFER_VARIANTS`: one of its parts off or changed) are scored
inside the original's dlib jaw+brow hull (`morph3d.evaluate.measures.face_appearance`: grey SSIM,
PSNR, detail ratio, mean-Lab distance), by the dlib identity distance to the source
photo and by the tone seam at the face's edge (`seam_delta`); contact sheets (original |
variants, face crops) go to out/transfer/.

    .venv/bin/python tools/probe_transfer.py [--cases roundtrip,cross] [--frames 150,60,100]
        [--variants transfer,warp_only,ratio_only] [--sources mark.jpg,woman.png]
        [--tag _name] [--cross-frames "orig:0,16,32;nggyup:0,60"] [--orig-roundtrip 28]
        [--masks]

`--masks` also writes, per case and variant, the frame | the transfer's kept-actor pixels (red)
and the compositor's occluders (blue) | the output (masks_*.png).

Fits come from the swap's work folder (`fit_clip`: nggyup.mp4 with --max-frames 160,
orig.webm with 40). Results: out/transfer/results.json and the sheets beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEDIA = ROOT.parent / "shared" / "media"
OUT = ROOT / "out" / "transfer"


def read_frame(path: Path, index: int) -> np.ndarray:
    from morph3d.io.media import iter_frames

    for frame in iter_frames(path, index, index + 1):
        return frame.rgb
    raise SystemExit(f"no frame {index} in {path}")


def dlib_face(img: np.ndarray) -> np.ndarray | None:
    from fitting.detection import detect_faces
    from fitting.faces import IBUG68

    faces = detect_faces(img, "dlib")
    if not len(faces):
        return None
    return faces.landmarks[IBUG68][int(np.argmax(faces.areas()))]


def identity_distance(img: np.ndarray, source_embedding: np.ndarray) -> float:
    from fitting.embedding import embedding_distance, face_embedding

    points = dlib_face(img)
    if points is None:
        return float("nan")
    return float(embedding_distance(face_embedding(img, points), source_embedding))


def crop_of(img: np.ndarray, ibug: np.ndarray, side: int = 320) -> np.ndarray:
    lo, hi = ibug.min(0), ibug.max(0)
    c = (lo + hi) / 2
    half = 0.75 * float((hi - lo).max())
    x0, y0 = int(max(c[0] - half, 0)), int(max(c[1] - half * 1.1, 0))
    x1, y1 = int(min(c[0] + half, img.shape[1])), int(min(c[1] + half * 0.9, img.shape[0]))
    return cv2.resize(img[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA
                      if y1 - y0 > side else cv2.INTER_CUBIC)


def seam_delta(original: np.ndarray, output: np.ndarray, ibug68: np.ndarray,
               inside: float = 0.1, outside: float = 0.2) -> float:
    """The tone seam at the face's edge: the Lab distance (CIE76) between the mean colour of
    a band just inside the original's jaw+brow hull (`inside` IOD deep) and one just outside
    it (`outside` IOD wide), both on the original frame's skin only (its skin model,
    `non_skin_score` under 3 sigmas; the same pixels for every output), so hair and
    background do not count. The original itself scores its natural contrast."""
    from morph3d.composite.masks import face_geometry
    from morph3d.composite.occluders import fit_skin_model, non_skin_score
    from morph3d.evaluate.measures import face_hull_mask

    hull = face_hull_mask(ibug68, original.shape[:2])
    iod = face_geometry({"ibug68": ibug68}).iod
    depth_in = cv2.distanceTransform(hull.astype(np.uint8), cv2.DIST_L2, 5)
    depth_out = cv2.distanceTransform((~hull).astype(np.uint8), cv2.DIST_L2, 5)
    model = fit_skin_model(original.astype(np.float32) / 255.0, {"ibug68": ibug68})
    skin = non_skin_score(original.astype(np.float32) / 255.0, model) < 3.0
    band_in = hull & (depth_in <= inside * iod) & skin
    band_out = ~hull & (depth_out <= outside * iod) & skin
    if band_in.sum() < 20 or band_out.sum() < 20:
        return float("nan")
    lab = cv2.cvtColor(output.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return float(np.linalg.norm(lab[band_in].mean(0) - lab[band_out].mean(0)))


def label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


# Variants of `transfer_face`'s keywords the probe can compare ("transfer": the defaults).
TRANSFER_VARIANTS: dict[str, dict] = {
    "transfer": {},
    "b3": {"max_brighten": 3.0},
    "light5": {"light": 0.5},
    "light7": {"light": 0.7},
    "light1": {"light": 1.0},
    "b8": {"max_brighten": 8.0},
    "noprotect": {"protect": False},
    "nocap": {"highlight_cap": 0.0},
    "nofore": {"forehead": 0.0},
    "s03": {"ratio_sigma": 0.03},
    "s06": {"ratio_sigma": 0.06},
    "noalign": {"alignment": None},
    "nosurround": {"surround": 0.0},
    "sur04": {"surround": 0.4},
    "sur15": {"surround": 1.5},
    "detail0": {"detail": 0.0},
    "detail05": {"detail": 0.05},
    "detail25": {"detail": 0.25},
    "nosharp": {"sharpness": False},
    "noblack": {"black": False},
    "warp_only": {"ratio_on": False},
    "ratio_only": {"warp_on": False},
}


def region_channels(model):
    import torch

    from morph3d.swap.window import REGION_CHANNELS

    return torch.from_numpy(np.stack([model.region(n) for n in REGION_CHANNELS], 1)
                            .astype(np.float32))


_MASKS: dict = {}  # the last frame's masks, for --masks


def write_masks(out: np.ndarray, frame: np.ndarray, masks: dict, path: Path) -> None:
    """The output beside the frame with the transfer's kept-actor pixels (red, on the
    frame) and the compositor's occluders (blue), cut to the face's neighbourhood."""
    occ = masks.get("occluders")
    view = frame.copy()
    if occ is not None and occ.shape == frame.shape[:2]:
        view[occ] = (0.5 * view[occ] + [0, 0, 127]).astype(np.uint8)
    keep = masks.get("keep")
    if keep is not None:
        k, (x0, y0, side) = keep
        full = cv2.resize(k.astype(np.uint8), (int(round(side)), int(round(side))),
                          interpolation=cv2.INTER_NEAREST)
        canvas = np.zeros(frame.shape[:2], np.uint8)
        xa, ya = int(round(x0)), int(round(y0))
        xs, ys = max(xa, 0), max(ya, 0)
        xe, ye = min(xa + full.shape[1], frame.shape[1]), min(ya + full.shape[0], frame.shape[0])
        canvas[ys:ye, xs:xe] = full[ys - ya:ye - ya, xs - xa:xe - xa]
        on = canvas > 0
        view[on] = (0.5 * view[on] + [127, 0, 0]).astype(np.uint8)
    ys, xs = np.nonzero(masks.get("face", np.ones(frame.shape[:2], bool)))
    y0, y1 = max(ys.min() - 40, 0), ys.max() + 40
    x0, x1 = max(xs.min() - 40, 0), xs.max() + 40
    sheet = np.concatenate([frame[y0:y1, x0:x1], view[y0:y1, x0:x1], out[y0:y1, x0:x1]], 1)
    sheet = cv2.resize(sheet, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def _record_keep(function):
    """`actor_non_skin` that also keeps its result (crop grid and box) for --masks."""
    def wrapped(seen, covered, model, regions, lm68, box, size, crop_iod, **kw):
        keep = function(seen, covered, model, regions, lm68, box, size, crop_iod, **kw)
        _MASKS["keep"] = (keep, box)
        return keep
    return wrapped


def transfer_swap(model, source_fit, clip_fit, setup, index: int, frame: np.ndarray,
                  **params) -> np.ndarray:
    """One frame through the swap's transfer path (`transfer_face` with the job's
    `prepare_transfer` setup + the transfer compositor), uint8; `params` override
    `transfer_face`'s keywords."""
    import morph3d.swap.transfer as transfer
    from morph3d.composite.compositor import FaceCompositor, FrameInputs
    from morph3d.swap.transfer import compositor_config, transfer_face

    if not getattr(transfer.actor_non_skin, "_probe", False):
        transfer.actor_non_skin = _record_keep(transfer.actor_non_skin)
        transfer.actor_non_skin._probe = True
    channels = region_channels(model)
    f = clip_fit.faces
    actor_lms = {s: clip_fit.landmarks[s][index] for s in clip_fit.landmarks}
    keywords = {"source_factor": setup.source_factor, "alignment": setup.alignment,
                "eye_openness": setup.eye_openness, **params}
    out = transfer_face(model, source_fit.identity.coefficients, setup.actor_identity,
                        setup.textures, channels, clip_fit.camera, f.rotation[index],
                        f.translation[index], f.expression[index], frame,
                        actor_lms, **keywords)
    result, info = FaceCompositor(compositor_config()).process(FrameInputs(
        frame=frame, render=out["image"], coverage=out["coverage"], actor_landmarks=actor_lms,
        swapped_landmarks={"ibug68": out["ibug68"], "mediapipe478": out["mediapipe478"]},
        regions=out["regions"], window=out["window"]))
    _MASKS["occluders"] = info.occluders
    _MASKS["face"] = info.alpha > 0.05
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="roundtrip,cross")
    parser.add_argument("--variants", default="transfer,warp_only,ratio_only",
                        help=f"comma-separated, of: {', '.join(TRANSFER_VARIANTS)}")
    parser.add_argument("--sources", default="mark.jpg,man_dark_skin.png,woman.png,"
                        "khabenskii.jpg", help="cross cases' source photos (media folder)")
    parser.add_argument("--tag", default="", help="suffix of the sheets' and results' names")
    parser.add_argument("--frames", default="150,60,100,200")
    parser.add_argument("--cross-frames", default="nggyup:150,0;orig:30",
                        help="cross cases' frames per clip, e.g. 'orig:0,16,32;nggyup:0,60'")
    parser.add_argument("--orig-roundtrip", default="",
                        help="orig.webm frames swapped with themselves as the source, e.g. 28")
    parser.add_argument("--masks", action="store_true",
                        help="also write the kept-actor mask (transfer) and the compositor's "
                        "occluders over each variant's output")
    args = parser.parse_args()

    import torch

    from fitting.embedding import face_embedding
    from morph3d.evaluate.measures import face_appearance
    from morph3d.model.registry import load_model
    from morph3d.swap.albedo import prepare_transfer
    from morph3d.swap.fits import find_source_faces, fit_clip, fit_source
    from morph3d.swap.options import SwapOptions

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    model = load_model("default")
    k = 150
    ng = MEDIA / "nggyup.mp4"
    orig = MEDIA / "orig.webm"
    src150 = OUT / "nggyup_f150.png"
    if not src150.exists():
        cv2.imwrite(str(src150), cv2.cvtColor(read_frame(ng, k), cv2.COLOR_RGB2BGR))
    src10 = OUT / "orig_f10.png"
    if not src10.exists():
        cv2.imwrite(str(src10), cv2.cvtColor(read_frame(orig, 10), cv2.COLOR_RGB2BGR))
    nggyup_frames = [int(f) for f in args.frames.split(",")] + [
        int(f) for spec in args.cross_frames.split(";") if spec.startswith("nggyup:")
        for f in spec.split(":")[1].split(",")]
    last = max(nggyup_frames)
    clips = {"nggyup": (ng, SwapOptions(
        max_frames=160 if last < 160 else 210 if last < 210 else None, quiet=True)),
        "orig": (orig, SwapOptions(max_frames=40, quiet=True))}
    cases = []
    if "roundtrip" in args.cases:
        cases += [("roundtrip", src150, "nggyup", int(f)) for f in args.frames.split(",")]
        cases += [("roundtrip", src10, "orig", 10), ("roundtrip", src10, "orig", 30)]
    for f in filter(None, args.orig_roundtrip.split(",")):
        src = OUT / f"orig_f{int(f)}.png"
        if not src.exists():
            cv2.imwrite(str(src), cv2.cvtColor(read_frame(orig, int(f)), cv2.COLOR_RGB2BGR))
        cases.append(("roundtrip", src, "orig", int(f)))
    if "cross" in args.cases:
        for src in args.sources.split(","):
            for spec in args.cross_frames.split(";"):
                clip, frames = spec.split(":")
                cases += [(f"cross-{Path(src).stem}", MEDIA / src, clip, int(f))
                          for f in frames.split(",")]
    fits: dict = {}
    setups: dict = {}
    results = []
    sheets = []
    for name, source, clip, index in cases:
        path, opts = clips[clip]
        if clip not in fits:
            with torch.enable_grad():
                fits[clip], _ = fit_clip(path, model, opts)
        clip_fit = fits[clip]
        with torch.enable_grad():  # a photo not fitted yet is fitted by gradient descent
            # About this clip's actor, as the swap fits it.
            source_fit, _ = fit_source([source], model, SwapOptions(),
                                       find_source_faces([source], SwapOptions()),
                                       clip_fit.identity.coefficients)
        src_rgb = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB)
        src_pts = dlib_face(src_rgb)
        src_emb = face_embedding(src_rgb, src_pts)
        frame = read_frame(path, index)
        if (source, clip) not in setups:  # the job's constants, the actor's albedo included
            setups[source, clip] = prepare_transfer(model, source_fit, clip_fit, src_rgb, path,
                                                    region_channels(model))
        outputs = {}
        for variant in args.variants.split(","):
            if variant not in TRANSFER_VARIANTS:
                raise SystemExit(f"unknown variant {variant!r} "
                                 f"(of: {', '.join(TRANSFER_VARIANTS)})")
            t = time.perf_counter()
            out = transfer_swap(model, source_fit, clip_fit, setups[source, clip], index,
                                frame, **TRANSFER_VARIANTS[variant])
            outputs[variant] = (out, time.perf_counter() - t)
            if args.masks:
                write_masks(out, frame, dict(_MASKS),
                            OUT / f"masks_{name}_{clip}_{index}_{variant}{args.tag}.png")
        ref = dlib_face(frame)
        if ref is None:  # dlib misses small faces (a wide shot): the clip fit's points
            ref = np.asarray(clip_fit.landmarks["ibug68"][index], np.float64)
        row = {"case": name, "clip": clip, "frame": index}
        cells = [label(crop_of(frame, ref), f"{name} {clip}#{index} original")]
        if name != "roundtrip":
            cells.insert(0, label(crop_of(src_rgb, src_pts), "source"))
        for key, (out, seconds) in outputs.items():
            m = face_appearance(frame, out, ref)
            m["id_dist"] = identity_distance(out, src_emb)
            m["seam"] = seam_delta(frame, out, ref)
            m["seconds"] = seconds
            row[key] = {a: round(float(b), 4) for a, b in m.items()}
            cells.append(label(crop_of(out, ref), f"{key} ssim {m['face_ssim']:.3f} "
                               f"id {m['id_dist']:.3f} seam {m['seam']:.1f}"))
        m = face_appearance(frame, frame, ref)
        row["original_id_dist"] = round(identity_distance(frame, src_emb), 4)
        row["original_seam"] = round(seam_delta(frame, frame, ref), 2)
        results.append(row)
        print(json.dumps(row), flush=True)
        sheet = np.concatenate(cells, 1)
        sheets.append(sheet)
        cv2.imwrite(str(OUT / f"sheet_{name}_{clip}_{index}{args.tag}.png"),
                    cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    (OUT / f"results{args.tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
