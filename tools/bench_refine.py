"""Benchmark the learned refinement: face super-resolution quality and speed.

Usage: python tools/bench_refine.py [--json out.json] [--data ../shared/media]
           [--weights morph3d/weights/sr.npz] [--picture docs/sr_side_by_side.png]

Quality: held-out real face crops (the files matching the training hold-out patterns:
orig.webm's frames, khabenskii.jpg, aligned_source1/aligned_target2.png; people never seen
in training) are downscaled x2 / x4 and upscaled back by bicubic and by the net; PSNR (dB)
and SSIM against the original crop, `scale` border pixels shaved. Two input protocols:
``clean`` (area downscale, 8-bit) and ``degraded`` (plus noise sigma 2/255 and JPEG q75).
Speed: milliseconds per 256x256 output (128 -> 256 for x2, 64 -> 256 for x4) with
torch.set_num_threads(2), median and best of --repeats runs (the best is the figure with no
other load on the machine), and the CPU time of one call on one thread (barely changed by
other load: an idle 2-core machine's wall time is at most this).

Texture completion (`--completion`, on by default): the held-out people's fitted UV
textures (mark.jpg, aligned_source3.png, khabenskii.jpg, aligned_source1.png,
aligned_target2.png; the fits are cached by the training data collector) with the same
synthetic visibility masks as training (the head turned by another pose, random blobs):
mean L1 and SSIM on the hidden texels (seen by the photo, hidden by the mask) for the
classical completion (mirror + pull-push) and the net; ms per 512-texel texture. Then
identity: the held-out people's photos (--swap-sources: mark.jpg, khabenskii.jpg,
aligned_source1.png, aligned_target2.png) are swapped into the first --swap-frames frames
(default all 66) of orig.webm with `refine=neural` twice, once with the completion weights
hidden (classical completion, neural SR) and once with them (neural completion, neural SR),
and each output is scored by `morph3d.evaluate` (dlib embedding distance of the swapped
face to the source; the per-frame differences are paired for a standard error).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from morph3d.io.images import write_image
from morph3d.neural.refine import DEFAULT_WEIGHTS, bicubic_upscale, load_super_resolver
from morph3d.neural.training.refine import collect_face_crops, degrade, evaluate, psnr

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "media"
TILE = 256


def time_upscale(resolver, image: np.ndarray, scale: int, repeats: int) -> tuple[float, float]:
    """(median, best) milliseconds of resolver.upscale(image, scale)."""
    for _ in range(3):
        resolver.upscale(image, scale)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        resolver.upscale(image, scale)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def cpu_ms_one_thread(resolver, image: np.ndarray, scale: int, repeats: int) -> float:
    """Median CPU milliseconds (thread time) of one upscale on one torch thread: a figure
    that other load on the machine barely changes, unlike wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resolver.upscale(image, scale)
        times = []
        for _ in range(repeats):
            start = time.thread_time()
            resolver.upscale(image, scale)
            times.append((time.thread_time() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def _tile(image: np.ndarray, label: str) -> np.ndarray:
    """A TILE x TILE grey tile with `image` centred (never resampled) and a caption."""
    tile = np.full((TILE, TILE, 3), 0.5, np.float32)
    h, w = image.shape[:2]
    y, x = (TILE - h) // 2, (TILE - w) // 2
    tile[y:y + h, x:x + w] = image[:TILE, :TILE]
    u8 = np.clip(np.rint(tile * 255), 0, 255).astype(np.uint8)
    u8[TILE - 20:] = 0
    cv2.putText(u8, label, (5, TILE - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                cv2.LINE_AA)
    return u8


def side_by_side(resolver, crops: list[np.ndarray], sources: list[str], out: Path) -> None:
    """Rows: the middle held-out crop of each source file at x2, then the first of them at
    x4; columns: bicubic | ours | ground truth (crops shown at their own size)."""
    picks: list[tuple[int, int]] = []
    for name in sorted(set(sources)):
        indices = [i for i, s in enumerate(sources) if s == name]
        picks.append((indices[len(indices) // 2], 2))
    picks.append((picks[0][0], 4))
    rows = []
    for i, scale in picks:
        crop = crops[i]
        side = crop.shape[0] - crop.shape[0] % scale
        hr = crop[:side, :side].astype(np.float32) / 255.0
        lr = degrade(hr, scale, "clean")
        bic, ours = bicubic_upscale(lr, scale), resolver.upscale(lr, scale)
        rows.append(np.concatenate([
            _tile(bic, f"bicubic x{scale} {psnr(bic, hr, scale):.2f} dB"),
            _tile(ours, f"ours x{scale} {psnr(ours, hr, scale):.2f} dB"),
            _tile(hr, f"truth ({sources[i]})"),
        ], axis=1))
    write_image(out, np.concatenate(rows, axis=0))


def bundled_face_crops() -> tuple[list[np.ndarray], list[str]]:
    """Face crops of matplotlib's grace_hopper.jpg and scikit-image's astronaut.png."""
    from fitting.detection import get_landmark_backend
    from morph3d.io.images import read_image
    from morph3d.io.paths import bundled_source, bundled_target_photo
    from morph3d.neural.training.refine import face_crops_in_image

    crops, names = [], []
    with get_landmark_backend("mediapipe") as detector:
        for path in (bundled_source(), bundled_target_photo()):
            for crop in face_crops_in_image(read_image(path), detector):
                crops.append(crop)
                names.append(path.name)
    return crops, names


def completion_bench(args: argparse.Namespace) -> dict:
    """Hidden-texel quality and speed of the completion net vs the classical fill, and the
    identity distance of swaps made with each (see the module docstring)."""
    import morph3d.neural.completion as cn
    import morph3d.neural.training.completion as cnt
    from morph3d.model.registry import load_model
    from morph3d.neural.texture_completion import complete_uv_texture

    model = load_model("default")
    net = cn.load_completion_net(args.completion_weights)
    if net is None:
        raise SystemExit("no completion weights")
    data = net.manifest.get("data", {})
    samples = cnt.collect_texture_samples(
        args.data, model, holdout=tuple(data.get("holdout_patterns", cnt.DEFAULT_HOLDOUT)),
        exclude=tuple(data.get("exclude_patterns", cnt.DEFAULT_EXCLUDE)),
        frame_step=int(data.get("frame_step", 6)),
        masks=int(data.get("masks_per_texture", 4)),
        openings=bool(data.get("hide_openings", False)), progress=False)
    m = cnt.evaluate(net, samples.heldout, model)
    print(f"completion, held-out hidden texels ({m['cases']} cases from "
          f"{len(samples.heldout)} textures): L1 classic {m['l1_classic']:.4f} ours "
          f"{m['l1_ours']:.4f}; SSIM classic {m['ssim_classic']:.4f} ours {m['ssim_ours']:.4f}")
    for name, row in m["per_source"].items():
        print(f"  {name:<22} ({row['cases']} cases) L1 {row['l1_classic']:.4f} -> "
              f"{row['l1_ours']:.4f}, SSIM {row['ssim_classic']:.4f} -> {row['ssim_ours']:.4f}")
    # Speed: one 512-texel texture, 1 torch thread (the pipeline's setting).
    case = cnt.make_case(samples.heldout[0], 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    classic = complete_uv_texture(case.truth, case.visible)
    features = cn.uv_features(model)
    small = (cn._area(classic.texture, net.config.size), cn._area(case.visible, net.config.size))
    timings: dict[str, list[float]] = {"classic": [], "net": [], "total": []}
    for i in range(args.repeats // 3 + 3):
        t = time.perf_counter()
        classic = complete_uv_texture(case.truth, case.visible)
        t1 = time.perf_counter()
        net.residual(*small, features)
        t2 = time.perf_counter()
        net.complete(case.truth, case.visible, model)
        t3 = time.perf_counter()
        if i >= 3:
            timings["classic"].append((t1 - t) * 1e3)
            timings["net"].append((t2 - t1) * 1e3)
            timings["total"].append((t3 - t2) * 1e3)
    torch.set_num_threads(threads)
    ms = {k: statistics.median(v) for k, v in timings.items()}
    print(f"ms per 512-texel texture, 1 thread: classical {ms['classic']:.1f}, net forward "
          f"(128 texels) {ms['net']:.1f}, neural completion in all {ms['total']:.1f}")
    out: dict = {
        "completion_l1_ours": round(m["l1_ours"], 5),
        "completion_l1_classic": round(m["l1_classic"], 5),
        "completion_ssim_ours": round(m["ssim_ours"], 4),
        "completion_ssim_classic": round(m["ssim_classic"], 4),
        "completion_heldout_cases": m["cases"],
        "completion_per_source": m["per_source"],
        "completion_ms_net_128": round(ms["net"], 2),
        "completion_ms_total_512": round(ms["total"], 2),
        "completion_ms_classic_512": round(ms["classic"], 2),
        "completion_weights_sha256": net.manifest.get("sha256"),
    }
    if args.swap_frames > 0:
        out.update(identity_bench(args, cn))
    return out


def identity_bench(args: argparse.Namespace, cn) -> dict:
    """Swap each held-out source into orig.webm with the classical and the neural
    completion (neural SR in both) and score the identity distance to the source."""
    import warnings

    from morph3d.evaluate.runner import evaluate as evaluate_swap
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    work = REPO / "out" / "bench_completion"
    work.mkdir(parents=True, exist_ok=True)
    # A fresh fit cache per run: source and clip fits are cached by input, not by the
    # fitting code, so a cache from an earlier commit would pair an old classical fit with
    # a new neural one. Both completions of a run share the same fits.
    cache = work / f"cache-{os.getpid()}"
    shutil.rmtree(cache, ignore_errors=True)
    target = args.data / "orig.webm"
    rows: dict[str, dict[str, float]] = {}
    frames: dict[str, dict[str, np.ndarray]] = {}
    shipped = cn.DEFAULT_WEIGHTS
    weights = args.completion_weights or shipped
    for source in args.swap_sources:
        for label in ("classic", "neural"):
            output = work / f"{Path(source).stem}_{label}.mp4"
            options = SwapOptions(refine="neural", quiet=True, max_frames=args.swap_frames,
                                  work_dir=cache)
            # The classical run hides the completion weights (fit_source then falls back
            # to the classical fill); the super-resolver is the same in both runs.
            cn.DEFAULT_WEIGHTS = weights if label == "neural" else work / "absent.npz"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    swap([args.data / source], target, output, options)
            finally:
                cn.DEFAULT_WEIGHTS = shipped
            result = evaluate_swap(args.data / source, target, output,
                                   max_frames=args.swap_frames, noise_floor=False)
            rows.setdefault(source, {})[label] = float(result["id_dist_source"])
            frames.setdefault(source, {})[label] = np.array(
                [f.get("id_dist_source", np.nan) for f in result["per_frame"]], np.float64)
            print(f"identity distance to the source, {source} into orig.webm "
                  f"({args.swap_frames} frames), {label} completion: "
                  f"{result['id_dist_source']:.4f}")
    shutil.rmtree(cache, ignore_errors=True)
    mean = {label: float(np.mean([r[label] for r in rows.values()]))
            for label in ("classic", "neural")}
    # Paired per-frame differences (same frame, same source): their spread says whether
    # the mean difference is above the embedding's noise (frames are correlated in time,
    # so the standard error is a lower bound).
    diffs = np.concatenate([f["neural"] - f["classic"] for f in frames.values()])
    diffs = diffs[np.isfinite(diffs)]
    sem = float(diffs.std() / np.sqrt(max(len(diffs), 1)))
    print(f"mean identity distance: classic completion {mean['classic']:.4f}, neural "
          f"{mean['neural']:.4f}; paired per-frame difference {diffs.mean():+.4f} "
          f"(standard error {sem:.4f}, neural closer in {np.mean(diffs < 0):.0%} of frames)")
    return {"completion_id_dist_classic": round(mean["classic"], 4),
            "completion_id_dist_ours": round(mean["neural"], 4),
            "completion_id_dist_diff": round(float(diffs.mean()), 4),
            "completion_id_dist_diff_sem": round(sem, 4),
            "completion_id_frames_closer": round(float(np.mean(diffs < 0)), 3),
            "completion_id_dist_per_source": rows,
            "completion_swap_frames": args.swap_frames,
            "completion_swap_sources": list(args.swap_sources)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the headline numbers here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="media folder")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--picture", type=Path, default=REPO / "docs" / "sr_side_by_side.png",
                        help="side-by-side PNG to write ('' to skip)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--speed-only", action="store_true",
                        help="only time the nets (on a synthetic image); no files written")
    parser.add_argument("--no-sr", action="store_true", help="skip the super-resolver part")
    parser.add_argument("--no-completion", action="store_true",
                        help="skip the texture-completion part")
    parser.add_argument("--completion-weights", type=Path, default=None,
                        help="completion weights (default: the shipped ones)")
    parser.add_argument("--swap-frames", type=int, default=66,
                        help="frames of orig.webm per identity swap (0: skip the swaps)")
    parser.add_argument("--swap-sources", nargs="+",
                        default=["mark.jpg", "khabenskii.jpg", "aligned_source1.png",
                                 "aligned_target2.png"],
                        help="held-out source photos swapped into orig.webm for identity")
    args = parser.parse_args(argv)
    summary: dict = {}
    if not args.no_completion and not args.speed_only:
        summary.update(completion_bench(args))
    if args.no_sr:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0

    torch.set_num_threads(2)
    resolver = load_super_resolver(args.weights)
    if resolver is None:
        print(f"no weights at {args.weights}", file=sys.stderr)
        return 2
    if args.speed_only:
        rng = np.random.default_rng(0)
        probe = cv2.GaussianBlur(rng.random((128, 128, 3)).astype(np.float32), (0, 0), 2)
        ms2, best2 = time_upscale(resolver, probe, 2, args.repeats)
        ms4, best4 = time_upscale(resolver, probe[::2, ::2].copy(), 4, args.repeats)
        print(f"ms per 256x256 output: x2 median {ms2:.1f} (best {best2:.1f}), "
              f"x4 median {ms4:.1f} (best {best4:.1f}); 2 torch threads")
        print(f"CPU ms per 256x256 output on 1 thread: x2 "
              f"{cpu_ms_one_thread(resolver, probe, 2, args.repeats):.1f}, x4 "
              f"{cpu_ms_one_thread(resolver, probe[::2, ::2].copy(), 4, args.repeats):.1f}")
        return 0
    holdout = tuple(resolver.manifest.get("data", {}).get("holdout_patterns", ())) or None
    kwargs = {"holdout": holdout} if holdout else {}
    crops = collect_face_crops(args.data, progress=False, **kwargs)
    if not crops.heldout:
        print(f"no held-out face crops found in {args.data}", file=sys.stderr)
        return 2

    results: dict[str, dict[str, float]] = {}
    for scale in (2, 4):
        for profile in ("clean", "degraded"):
            results[f"x{scale}_{profile}"] = evaluate(resolver, crops.heldout, scale, profile)
    per_source = {}
    for name in sorted(set(crops.heldout_sources)):
        subset = [c for c, s in zip(crops.heldout, crops.heldout_sources, strict=True)
                  if s == name]
        per_source[name] = evaluate(resolver, subset, 2, "clean")
    probe = cv2.resize(crops.heldout[0], (TILE, TILE), interpolation=cv2.INTER_AREA)
    probe = probe.astype(np.float32) / 255.0
    ms2, best2 = time_upscale(resolver, cv2.resize(probe, (128, 128),
                                                   interpolation=cv2.INTER_AREA), 2, args.repeats)
    ms4, best4 = time_upscale(resolver, cv2.resize(probe, (64, 64),
                                                   interpolation=cv2.INTER_AREA), 4, args.repeats)

    cpu2 = cpu_ms_one_thread(resolver, cv2.resize(probe, (128, 128),
                                                  interpolation=cv2.INTER_AREA), 2, args.repeats)
    print(f"held-out crops: {len(crops.heldout)} from {sorted(set(crops.heldout_sources))}")
    print(f"{'setting':<14} {'bicubic dB':>10} {'ours dB':>8} {'gain dB':>8} "
          f"{'SSIM bic':>9} {'SSIM ours':>9} {'gain':>8}")
    for key, m in results.items():
        print(f"{key:<14} {m['psnr_bicubic']:>10.2f} {m['psnr_ours']:>8.2f} "
              f"{m['psnr_gain_db']:>+8.2f} {m['ssim_bicubic']:>9.4f} {m['ssim_ours']:>9.4f} "
              f"{m['ssim_gain']:>+8.4f}")
    for name, m in per_source.items():
        print(f"x2_clean {name:<20} ({m['crops']:>3} crops) {m['psnr_bicubic']:.2f} -> "
              f"{m['psnr_ours']:.2f} dB ({m['psnr_gain_db']:+.2f}), SSIM {m['ssim_gain']:+.4f}")
    source_mean = float(np.mean([m["psnr_gain_db"] for m in per_source.values()]))
    print(f"x2_clean gain, mean over held-out files (each counted once): {source_mean:+.2f} dB")
    print(f"ms per 256x256 output: x2 median {ms2:.1f} (best {best2:.1f}), "
          f"x4 median {ms4:.1f} (best {best4:.1f}); 2 torch threads; "
          f"x2 CPU time on 1 thread {cpu2:.1f} ms")

    if args.picture and str(args.picture) not in ("", "."):  # Path('') is '.'
        # The committed picture uses photos bundled with installed packages (never frames of
        # ../shared/media, which must not be copied into the repository); neither was
        # trained on.
        bundled, names = bundled_face_crops()
        side_by_side(resolver, bundled, names, args.picture)
        print(f"wrote {args.picture}")
    if args.json:
        x2, x2d = results["x2_clean"], results["x2_degraded"]
        x4, x4d = results["x4_clean"], results["x4_degraded"]
        summary = {
            "sr_psnr_gain_db": round(x2["psnr_gain_db"], 3),
            "sr_ssim_gain": round(x2["ssim_gain"], 4),
            "sr_ms_per_256": round(ms2, 2),
            "sr_ms_per_256_best": round(best2, 2),
            "sr_cpu_ms_per_256_1thread": round(cpu2, 2),
            "sr_psnr_bicubic_db": round(x2["psnr_bicubic"], 3),
            "sr_psnr_ours_db": round(x2["psnr_ours"], 3),
            "sr_degraded_psnr_gain_db": round(x2d["psnr_gain_db"], 3),
            "sr_degraded_ssim_gain": round(x2d["ssim_gain"], 4),
            "sr_x4_psnr_gain_db": round(x4["psnr_gain_db"], 3),
            "sr_x4_ssim_gain": round(x4["ssim_gain"], 4),
            "sr_x4_degraded_psnr_gain_db": round(x4d["psnr_gain_db"], 3),
            "sr_x4_ms_per_256": round(ms4, 2),
            "sr_heldout_crops": len(crops.heldout),
            "sr_psnr_gain_db_per_file_mean": round(source_mean, 3),
            "sr_x2_clean_per_file": per_source,
            "sr_weights_sha256": resolver.manifest.get("sha256"),
            **summary,
            "details": results,
            "machine": {"cpu_count_used": 2, "platform": platform.platform(),
                        "torch": torch.__version__},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
