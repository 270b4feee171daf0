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
other load: an idle 2-core machine's wall time is at most this). The texture-completion net
does not exist yet: its keys are null.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from morph3d.media import write_image
from morph3d.refine import (
    DEFAULT_WEIGHTS,
    bicubic_upscale,
    collect_face_crops,
    degrade,
    evaluate,
    load_super_resolver,
    psnr,
)

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
    from fitting.faces import get_landmark_backend
    from morph3d.demo import bundled_source, bundled_target_photo
    from morph3d.media import read_image
    from morph3d.refine import face_crops_in_image

    crops, names = [], []
    with get_landmark_backend("mediapipe") as detector:
        for path in (bundled_source(), bundled_target_photo()):
            for crop in face_crops_in_image(read_image(path), detector):
                crops.append(crop)
                names.append(path.name)
    return crops, names


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
    args = parser.parse_args(argv)

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

    if args.picture and str(args.picture):
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
            "completion_l1_ours": None,
            "completion_l1_classic": None,
            "completion_note": "texture-completion net not implemented yet (issue 7, part 2)",
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
