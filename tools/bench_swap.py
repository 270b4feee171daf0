"""Benchmark `morph3d swap` on the real clips and score it with `morph3d eval`.

    python tools/bench_swap.py [--quick] [--json FILE] [--out-dir out/bench_swap]
                               [--docs-dir docs/bench_swap] [--workers 2]

Cases (sources and clips from ../shared/media; the script stops with a message without them):

- orig_mark, orig_khabenskii: mark.jpg / khabenskii.jpg into orig.webm (66 frames, 464x560),
  next to the published peer method's outputs (ghost_*_on_orig.webm) scored by the same code.
- nggyup_mark, nggyup_khabenskii: the same photos into nggyup.mp4 (289 frames, 1280x720, audio).

Each clip gets a fresh work directory under the out dir, so the first source on a clip pays
for every stage (landmarks, clip fit, source fit) and the second source on the same clip shows
the cached re-run (only its own photo fit and the rendering), which is how the product is used
(fit a clip once, swap many faces into it). `nggyup_mark_classic` re-renders the fitted clip with
`--refine classic` (bicubic upscaling instead of the neural super-resolver).

Every swap runs as its own process, the CLI under light instrumentation
(`benchlib.run_swap`): the swap's stage hook records process CPU time and peak
RSS (VmHWM) at the stages' boundaries, and a thread samples the resident set size, so the report
has per-stage wall seconds (from the swap summary), per-stage CPU seconds and the memory
profile. On a shared machine the CPU seconds are the steadier measure: wall seconds depend
on what else runs.

Round trip (`roundtrip_orig`, `roundtrip_nggyup`): one frame k of the clip, written as PNG,
is the source photo and is swapped back into the same clip. A perfect pipeline gives the clip
back, so every pixel it changes inside the face is a loss: `morph3d eval`'s appearance metrics
(face SSIM / PSNR / detail ratio / Lab delta inside the original's jaw+brow hull) at frame k
(`roundtrip_*_at_source`) and over the frames swapped. orig.webm: k = 28 (a frontal frame,
eyes open), the whole clip (66 frames); nggyup.mp4: k = 150 (the long close-up), its first
180 frames (`--max-frames 180`: the opening close-up, the wide shot and 80 frames of the
close-up). Contact sheets (original | ours | |difference| x4, face crops, frame k first) go to
OUT_DIR/roundtrip_<clip>_contact.png. --roundtrip-only runs just these two cases.

--quick: the orig.webm cases only, first 30 frames, no pictures in the docs folder.
The markdown tables go to stdout and to OUT_DIR/tables.md; the full results to --json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MEDIA, ROOT, machine, machine_line, run_swap, write_json  # noqa: E402

QUICK_FRAMES = 30
CONTACT_SAMPLES = 5  # frames per case contact sheet
CELL_PX = 200


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

METRIC_KEYS = ("coverage", "id_dist_source", "id_swap_rate", "id_dist_target",
               "id_dist_source_vs_original", "pose_mae_deg", "pose_mae_deg_offset_removed",
               "mar_corr", "ear_corr", "gaze_err", "jitter_added", "jitter_noise_floor",
               "jitter_original", "jitter_from_shape", "jitter_added_regions",
               "jitter_noise_floor_regions", "face_ssim", "face_psnr", "detail_ratio",
               "detail_ratio_relative", "face_lab_delta", "frames", "frames_original_face",
               "frames_matched", "seconds")

# Round-trip cases: clip -> (frame k used as the source photo, frames swapped and scored).
ROUNDTRIP = {"orig": (28, None), "nggyup": (150, 180)}
QUICK_ROUNDTRIP = {"orig": (28, QUICK_FRAMES)}
ROUNDTRIP_SHEET_FRAMES = 4  # rows per round-trip contact sheet (frame k first)
ROUNDTRIP_CELL_PX = 256


def jitter_from_shape(work_dir: Path, source_fit: Path) -> float:
    """The part of `jitter_added` that the identity change itself implies.

    The swap renders the source's face shape with the actor's per-frame pose and expression,
    so even a perfect render's landmarks move differently from the actor's when the head
    turns (a longer nose sweeps farther). This is `morph3d.evaluate`'s added-motion measure
    computed on the fits instead of on detections: the swapped shape's projected 68 points
    (mediapipe-derived table, like the evaluator's) against the actor fit's, per consecutive
    pair of fitted frames, over the actor's inter-ocular distance (eye centres)."""
    import dataclasses

    from fitting import correspondence as FC
    from fitting import photo as FP
    from fitting.params import Identity, VideoFit
    from morph3d.evaluate.metrics import added_motion
    from morph3d.model.registry import load_model

    model = load_model("default")
    (clip_fit,) = work_dir.glob("clip-*/fit-*.npz")
    actor = VideoFit.load(clip_fit)
    source = VideoFit.load(source_fit)
    swapped = dataclasses.replace(actor, identity=Identity(source.identity.coefficients))
    a = FP.projected_landmarks(actor, model, convention=FC.MEDIAPIPE)
    b = FP.projected_landmarks(swapped, model, convention=FC.MEDIAPIPE)
    valid = actor.faces.valid
    values = []
    for t in range(len(a) - 1):
        if not (valid[t] and valid[t + 1]):
            continue
        iod = np.mean([np.linalg.norm(a[k, 36:42].mean(0) - a[k, 42:48].mean(0))
                       for k in (t, t + 1)])
        values.append(added_motion(b[t], b[t + 1], a[t], a[t + 1], float(iod)))
    return float(np.mean(values)) if values else math.nan


def run_eval(source: Path, target: Path, output: Path, out_json: Path, plots: Path,
             workers: int, max_frames: int | None) -> dict[str, Any]:
    from morph3d.evaluate.metrics import write_json
    from morph3d.evaluate.runner import evaluate

    result = evaluate(source, target, output, workers=workers, plots_dir=plots,
                      max_frames=max_frames)
    write_json(result, out_json)
    return result


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    from morph3d.io.media import iter_frames

    wanted, found = set(indices), {}
    for frame in iter_frames(path, 0, max(indices) + 1):
        if frame.index in wanted:
            found[frame.index] = frame.rgb
    return found


def face_crop(rgb: np.ndarray, box: list[float], side_px: int) -> np.ndarray:
    """The eval contact sheet's crop, 1.6 times the box's longer side, bicubic when enlarged."""
    import cv2

    from morph3d.evaluate.plots import face_crop as eval_face_crop

    return eval_face_crop(rgb, box, side_px, scale=1.6, upscale=cv2.INTER_CUBIC)


def source_cell(source: Path, side: int) -> np.ndarray:
    from fitting.detection import detect_faces
    from fitting.faces import MEDIAPIPE478, landmark_box
    from morph3d.evaluate.plots import label_cell
    from morph3d.io.images import read_image

    rgb = read_image(source)
    faces = detect_faces(rgb, "mediapipe")
    k = int(np.argmax(faces.areas()))
    return label_cell(face_crop(rgb, list(landmark_box(faces.landmarks[MEDIAPIPE478][k])), side),
                 f"source {source.stem}")


def pick_frames(per_frame: list[dict], count: int) -> list[int]:
    matched = [r["index"] for r in per_frame if r.get("matched") and r.get("original_box")]
    if not matched:
        return []
    picks = {matched[round(k * (len(matched) - 1) / max(count - 1, 1))]
             for k in range(min(count, len(matched)))}
    return sorted(picks)


def case_sheet(per_frame: list[dict], source: Path, target: Path,
               outputs: dict[str, Path], count: int) -> np.ndarray:
    """Rows `source | original | output per method` of face crops for `count` frames."""
    from morph3d.evaluate.plots import label_cell

    boxes = {r["index"]: r["original_box"] for r in per_frame if r.get("original_box")}
    picks = pick_frames(per_frame, count)
    originals = read_frames(target, picks)
    swapped = {name: read_frames(path, picks) for name, path in outputs.items()}
    src = source_cell(source, CELL_PX)
    rows = []
    for i in picks:
        cells = [src, label_cell(face_crop(originals[i], boxes[i], CELL_PX), f"original #{i}")]
        for name, frames in swapped.items():
            frame = frames.get(i)
            if frame is None:
                cells.append(label_cell(np.zeros_like(src), f"{name}: no frame"))
                continue
            box = rescale_box(boxes[i], originals[i].shape, frame.shape)
            cells.append(label_cell(face_crop(frame, box, CELL_PX), f"{name} #{i}"))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def rescale_box(box: list[float], from_shape: tuple, to_shape: tuple) -> list[float]:
    sx, sy = to_shape[1] / from_shape[1], to_shape[0] / from_shape[0]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def strip_sheet(per_frame: list[dict], source: Path, target: Path, output: Path,
                indices: list[int]) -> np.ndarray:
    """Two rows of close face crops: the original frames above, the swapped ones below, with
    the source photo at the left (the nggyup contact sheets)."""
    from morph3d.evaluate.plots import label_cell

    boxes = {r["index"]: r["original_box"] for r in per_frame if r.get("original_box")}
    indices = [i for i in indices if i in boxes]
    originals, swapped = read_frames(target, indices), read_frames(output, indices)
    src = source_cell(source, CELL_PX)
    top = [label_cell(np.full_like(src, 40), "original above")]
    bottom = [src]
    for i in indices:
        top.append(label_cell(face_crop(originals[i], boxes[i], CELL_PX), f"original #{i}"))
        bottom.append(label_cell(face_crop(swapped[i], boxes[i], CELL_PX), f"swapped #{i}"))
    return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


def plots_panel(plots: Path) -> np.ndarray:
    """evaluate's four plots in one 2x2 picture at 60 % size."""
    import cv2

    imgs = [cv2.imread(str(plots / f"{n}.png"))[..., ::-1]
            for n in ("identity", "pose", "expression", "trajectory")]
    width = max(i.shape[1] for i in imgs)

    def pad(img: np.ndarray, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, np.uint8)
        out[:img.shape[0], :img.shape[1]] = img
        return out

    rows = []
    for a, b in ((imgs[0], imgs[1]), (imgs[2], imgs[3])):
        height = max(a.shape[0], b.shape[0])
        rows.append(np.concatenate([pad(a, height), pad(b, height)], axis=1))
    panel = np.concatenate(rows, axis=0)
    return cv2.resize(panel, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)


def write_picture(path: Path, rgb: np.ndarray) -> Path:
    """JPEG (quality 88) or PNG by suffix, via a temp file."""
    import cv2

    from morph3d.io.atomic import atomic_write_bytes

    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if path.suffix.lower() in (".jpg", ".jpeg") else [
        cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise OSError(f"could not write {path}")
    atomic_write_bytes(path, encoded.tobytes())
    return path


# --------------------------------------------------------------------------------------------
# Round trip: the clip's own frame as the source
# --------------------------------------------------------------------------------------------


def write_source_frame(target: Path, index: int, path: Path) -> Path:
    """Frame `index` of `target` as a PNG (lossless: the source is exactly that frame)."""
    from morph3d.io.images import write_image

    frames = read_frames(target, [index])
    if index not in frames:
        sys.exit(f"bench_swap: {target.name} has no frame {index}")
    write_image(path, frames[index])
    return path


def roundtrip_scores(result: dict[str, Any], k: int) -> dict[str, Any]:
    """The round-trip numbers of an eval result: at the source frame k and over the clip."""
    at = next((r for r in result["per_frame"] if r["index"] == k), {})
    floor = result.get("noise_floor") or {}
    return {
        "source_frame": k,
        "roundtrip_face_ssim_at_source": at.get("face_ssim"),
        "roundtrip_face_psnr_at_source": at.get("face_psnr"),
        "detail_ratio_at_source": at.get("detail_ratio"),
        "face_lab_delta_at_source": at.get("face_lab_delta"),
        "roundtrip_face_ssim": result.get("face_ssim"),
        "roundtrip_face_psnr": result.get("face_psnr"),
        "detail_ratio": result.get("detail_ratio"),
        "detail_ratio_relative": result.get("detail_ratio_relative"),
        "face_lab_delta": result.get("face_lab_delta"),
        "frames_scored": sum(1 for r in result["per_frame"] if r.get("face_ssim") is not None),
        # what an H.264 CRF-23 re-encode of the original alone scores (the floor of any
        # encoded output)
        "reencode_face_ssim": floor.get("face_ssim"),
        "reencode_face_psnr": floor.get("face_psnr"),
        "reencode_detail_ratio": floor.get("detail_ratio"),
    }


def roundtrip_sheet(per_frame: list[dict], target: Path, output: Path, k: int,
                    count: int = ROUNDTRIP_SHEET_FRAMES) -> np.ndarray:
    """Rows `original | ours | |difference| x4` of face crops: frame k, then frames spread
    over the clip, each labelled with its face SSIM."""
    from morph3d.evaluate.plots import label_cell

    rows_by_index = {r["index"]: r for r in per_frame
                     if r.get("original_box") and r.get("face_ssim") is not None}
    others = [i for i in pick_frames(per_frame, count + 1) if i != k and i in rows_by_index]
    picks = ([k] if k in rows_by_index else []) + others[:count - 1]
    originals, swapped = read_frames(target, picks), read_frames(output, picks)
    side = ROUNDTRIP_CELL_PX
    rows = []
    for i in picks:
        row = rows_by_index[i]
        box = row["original_box"]
        a = face_crop(originals[i], box, side)
        b = face_crop(swapped[i], rescale_box(box, originals[i].shape, swapped[i].shape), side)
        diff = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * 4, 0, 255)
        tag = "k " if i == k else ""
        rows.append(np.concatenate([
            label_cell(a, f"{tag}original #{i}"),
            label_cell(b, f"ours ssim {row['face_ssim']:.3f} dr {row['detail_ratio']:.2f}"),
            label_cell(diff.astype(np.uint8), f"|diff| x4 lab {row['face_lab_delta']:.1f}"),
        ], axis=1))
    return np.concatenate(rows, axis=0)


def run_roundtrips(cases: dict[str, tuple[int, int | None]], clips: dict[str, Path],
                   out: Path, workers: int) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
    """Swap frame k of each clip back into the clip, score it, draw its contact sheet."""
    results: dict[str, Any] = {}
    runs: list[tuple[str, dict]] = []
    for clip, (k, frames) in cases.items():
        name = f"roundtrip_{clip}"
        target = clips[clip]
        source = write_source_frame(target, k, out / f"{name}_source_f{k}.png")
        output = out / f"{name}.mp4"
        print(f"[bench_swap] swap {name} (frame {k} as the source, "
              f"{frames or 'all'} frames)", flush=True)
        run = run_swap(source, target, output, out / f"work_{clip}_roundtrip", frames)
        runs.append((name, run))
        print(f"[bench_swap] eval {name}", flush=True)
        result = run_eval(source, target, output, out / f"{name}.eval.json",
                          out / "eval" / name, workers, frames)
        scores = roundtrip_scores(result, k)
        sheet = roundtrip_sheet(result["per_frame"], target, output, k)
        scores["contact_sheet"] = str(write_picture(out / f"{name}_contact.png", sheet))
        results[name] = {"swap": run, "roundtrip": scores, "max_frames": frames,
                         "ours": {key: result.get(key) for key in METRIC_KEYS}}
    return results, runs


def roundtrip_table(results: dict[str, Any]) -> str:
    head = ("| case | frame k | frames scored | face SSIM at k | face PSNR at k (dB) | "
            "detail ratio at k | Lab delta at k | face SSIM (clip) | face PSNR (clip, dB) | "
            "detail ratio (clip) | Lab delta (clip) | H.264 CRF 23 re-encode: SSIM / PSNR |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, case in results.items():
        r = case["roundtrip"]
        lines.append(
            f"| {name} | {r['source_frame']} | {r['frames_scored']} | "
            f"{fmt(r['roundtrip_face_ssim_at_source'])} | "
            f"{fmt(r['roundtrip_face_psnr_at_source'], 2)} | {fmt(r['detail_ratio_at_source'])}"
            f" | {fmt(r['face_lab_delta_at_source'], 2)} | {fmt(r['roundtrip_face_ssim'])} | "
            f"{fmt(r['roundtrip_face_psnr'], 2)} | {fmt(r['detail_ratio'])} | "
            f"{fmt(r['face_lab_delta'], 2)} | {fmt(r['reencode_face_ssim'])} / "
            f"{fmt(r['reencode_face_psnr'], 2)} |")
    return "\n".join(lines)


def appearance_table(rows: list[tuple[str, str, dict]]) -> str:
    """Cross-identity cases: how much of the original's face the swap changes (not a loss
    here: another person's face should differ) and whether it keeps the detail."""
    head = ("| case | method | face SSIM | face PSNR (dB) | detail ratio | detail ratio over "
            "the grey level | Lab delta |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for case, method, m in rows:
        lines.append(f"| {case} | {method} | {fmt(m.get('face_ssim'))} | "
                     f"{fmt(m.get('face_psnr'), 2)} | {fmt(m.get('detail_ratio'))} | "
                     f"{fmt(m.get('detail_ratio_relative'))} | "
                     f"{fmt(m.get('face_lab_delta'), 2)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def score_table(rows: list[tuple[str, str, dict]]) -> str:
    head = ("| case | method | coverage | id_dist_source | id_swap_rate | id_dist_target | "
            "pose_mae_deg (offset removed) | mar_corr | ear_corr | gaze_err | "
            "jitter_added / noise floor (from the shape alone) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for case, method, m in rows:
        shape = (f" ({fmt(m['jitter_from_shape'], 4)})" if m.get("jitter_from_shape") is not None
                 else "")
        lines.append(
            f"| {case} | {method} | {fmt(m.get('coverage'), 2)} | {fmt(m.get('id_dist_source'))}"
            f" | {fmt(m.get('id_swap_rate'), 2)} | {fmt(m.get('id_dist_target'))} | "
            f"{fmt(m.get('pose_mae_deg'), 2)} ({fmt(m.get('pose_mae_deg_offset_removed'), 2)}) | "
            f"{fmt(m.get('mar_corr'))} | {fmt(m.get('ear_corr'))} | {fmt(m.get('gaze_err'))} | "
            f"{fmt(m.get('jitter_added'), 4)} / {fmt(m.get('jitter_noise_floor'), 4)}"
            f"{shape} |")
    return "\n".join(lines)


def jitter_region_table(rows: list[tuple[str, str, dict]]) -> str:
    """Where the added jitter is: each face region's iBUG points alone (noise floor in
    brackets)."""
    from morph3d.evaluate.measures import IBUG68_REGIONS

    head = "| case | method | " + " | ".join(IBUG68_REGIONS) + " |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for case, method, m in rows:
        added = m.get("jitter_added_regions") or {}
        floor = m.get("jitter_noise_floor_regions") or {}
        cells = [f"{fmt(added.get(r), 4)} ({fmt(floor.get(r), 4)})" for r in IBUG68_REGIONS]
        lines.append(f"| {case} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_rate(run: dict, stage: str, summary_key: str) -> str:
    """Frames per wall second of a stage (frames per CPU-second in brackets), or "cached"."""
    s, c = run["summary"], run["costs"]
    if summary_key in s["cached"] or stage not in c:
        return "cached"
    n = s["frames"]
    wall, cpu = s["seconds"].get(summary_key, c[stage]["wall_s"]), c[stage]["cpu_s"]
    return f"{n / wall:.1f} ({n / cpu:.1f})"


def speed_table(runs: list[tuple[str, dict]]) -> str:
    """fps per stage: wall (frames per CPU-second in brackets)."""
    head = ("| run | frames | cached | landmarks fps | fit clip fps | fit source s | "
            "render+composite+encode fps | end-to-end fps | process wall s | CPU share | "
            "load (1 min) | peak RSS MiB | output MB (original) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, run in runs:
        s, c = run["summary"], run["costs"]
        n = s["frames"]

        if "fit source" in s["cached"]:
            source = "cached"
        else:
            source = f"{s['seconds']['fit source']:.1f} ({c['fit source']['cpu_s']:.1f})"
        total_wall, total_cpu = s["seconds"]["total"], c["swap"]["cpu_s"]
        share = c["process"]["cpu_s"] / c["process"]["wall_s"]
        lines.append(
            f"| {name} | {n} | {', '.join(s['cached']) or 'none'} | "
            f"{stage_rate(run, 'landmarks', 'landmarks')} | "
            f"{stage_rate(run, 'fit video', 'fit clip')} | {source} | "
            f"{stage_rate(run, 'render', 'render')} | {n / total_wall:.1f} ({n / total_cpu:.1f}) | "
            f"{run['process_wall_s']:.0f} | {share:.2f} | {run['loadavg_before'][0]:.1f} | "
            f"{run['peak_rss_mib']:.0f} | {run['output_mb']:.2f} ({run['target_mb']:.2f}) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="orig.webm cases only, first 30 frames, no docs pictures")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "out" / "bench_swap")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs" / "bench_swap",
                        help="compact pictures for BENCHMARKS.md (full mode only)")
    parser.add_argument("--workers", type=int, default=2, help="evaluate's worker processes")
    parser.add_argument("--roundtrip-only", action="store_true",
                        help="only the round-trip cases (frame k of each clip as the source)")
    args = parser.parse_args()

    needed = ["mark.jpg", "khabenskii.jpg", "orig.webm", "ghost_mark_on_orig.webm",
              "ghost_khabenskii_on_orig.webm", "nggyup.mp4"]
    missing = [n for n in needed if not (MEDIA / n).is_file()]
    if missing:
        sys.exit(f"bench_swap: the real test media is missing ({', '.join(missing)} not in "
                 f"{MEDIA}); this benchmark needs ../shared/media beside the repository")

    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import shutil

    for old in out.glob("work_*"):  # fresh work directories: the fitting stages are timed
        shutil.rmtree(old)
    max_frames = QUICK_FRAMES if args.quick else None
    cases = [("orig", "mark"), ("orig", "khabenskii")]
    if not args.quick:
        cases += [("nggyup", "mark"), ("nggyup", "khabenskii")]
    if args.roundtrip_only:
        cases = []
    clips = {"orig": MEDIA / "orig.webm", "nggyup": MEDIA / "nggyup.mp4"}
    peers = {("orig", "mark"): MEDIA / "ghost_mark_on_orig.webm",
             ("orig", "khabenskii"): MEDIA / "ghost_khabenskii_on_orig.webm"}
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "cases": {}}
    runs: list[tuple[str, dict]] = []
    scores: list[tuple[str, str, dict]] = []

    for clip, person in cases:
        name = f"{clip}_{person}"
        source, target = MEDIA / f"{person}.jpg", clips[clip]
        output = out / f"{name}.mp4"
        print(f"[bench_swap] swap {name}", flush=True)
        fits_before = set((out / f"work_{clip}").glob("source-*.npz"))
        run = run_swap(source, target, output, out / f"work_{clip}", max_frames)
        runs.append((name, run))
        (source_fit,) = set((out / f"work_{clip}").glob("source-*.npz")) - fits_before
        print(f"[bench_swap] eval {name}", flush=True)
        ours = run_eval(source, target, output, out / f"{name}.eval.json",
                        out / "eval" / name, args.workers, max_frames)
        ours["jitter_from_shape"] = jitter_from_shape(out / f"work_{clip}", source_fit)
        case: dict[str, Any] = {"swap": run, "ours": {k: ours.get(k) for k in METRIC_KEYS},
                                "noise_floor": ours.get("noise_floor")}
        scores.append((name, "morph3d", ours))
        peer = peers.get((clip, person))
        peer_result = None
        if peer is not None:
            print(f"[bench_swap] eval peer {name}", flush=True)
            peer_result = run_eval(source, target, peer, out / f"{name}.peer.eval.json",
                                   out / "eval" / f"{name}_peer", args.workers, max_frames)
            case["peer"] = {k: peer_result.get(k) for k in METRIC_KEYS}
            scores.append((name, "peer (ghost)", peer_result))
        results["cases"][name] = case

        if not args.quick:
            docs = args.docs_dir.resolve()
            docs.mkdir(parents=True, exist_ok=True)
            outputs = {"morph3d": output}
            if peer is not None:
                outputs["peer"] = peer
            sheet = case_sheet(ours["per_frame"], source, target, outputs, CONTACT_SAMPLES)
            write_picture(docs / f"{name}_contact.jpg", sheet)
            write_picture(docs / f"{name}_plots.png", plots_panel(out / "eval" / name))
            if peer_result is not None:
                write_picture(docs / f"{name}_peer_plots.png",
                              plots_panel(out / "eval" / f"{name}_peer"))
            if clip == "nggyup":
                strip = strip_sheet(ours["per_frame"], source, target, output, NGGYUP_FRAMES)
                write_picture(ROOT / "docs" / f"contact_nggyup_{person}.jpg", strip)

    if not args.quick and not args.roundtrip_only:
        # The fitted clip again, bicubic upscaling instead of the neural super-resolver.
        print("[bench_swap] swap nggyup_mark_classic", flush=True)
        run = run_swap(MEDIA / "mark.jpg", clips["nggyup"], out / "nggyup_mark_classic.mp4",
                       out / "work_nggyup", max_frames, ["--refine", "classic"])
        runs.append(("nggyup_mark_classic", run))
        results["cases"]["nggyup_mark_classic"] = {"swap": run}

    roundtrips, roundtrip_runs = run_roundtrips(QUICK_ROUNDTRIP if args.quick else ROUNDTRIP,
                                                clips, out, args.workers)
    results["cases"].update(roundtrips)
    runs += roundtrip_runs
    results["machine"]["loadavg_end"] = os.getloadavg()
    m = results["machine"]
    tables = ((score_table(scores) + "\n\n" + jitter_region_table(scores) + "\n\n"
               + appearance_table(scores) + "\n\n" if scores else "")
              + roundtrip_table(roundtrips) + "\n\n"
              + speed_table(runs) + "\n\n" + machine_line(m) + "\n")
    (out / "tables.md").write_text(tables)
    print(tables)
    if args.json:
        write_json(args.json, results)
    return 0


# Frames of nggyup.mp4 for the close-up contact sheets: the opening close-up, the wide shot
# with the microphone and the raised hand, then the long close-up (turns, open mouth).
NGGYUP_FRAMES = [5, 30, 60, 100, 101, 150, 200, 240]


if __name__ == "__main__":
    sys.exit(main())
