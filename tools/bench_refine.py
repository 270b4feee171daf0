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
other load on the machine). The texture-completion net does not exist yet: its keys are null.
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


def _tile(image: np.ndarray, label: str) -> np.ndarray:
    """A TILE x TILE grey tile with `image` centred (never resampled) and a caption."""
    tile = np.full((TILE, TILE, 3), 0.5, np.float32)
    h, w = image.shape[:2]
    y, x = (TILE - h) // 2, (TILE - w) // 2
    tile[y:y + h, x:x + w] = image[:TILE, :TILE]
    u8 = np.clip(np.rint(tile * 255), 0, 255).astype(np.uint8)
    for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(u8, label, (6, TILE - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, thick,
                    cv2.LINE_AA)
    return u8


def side_by_side(resolver, crops: list[np.ndarray], sources: list[str], out: Path) -> None:
    """Rows: one held-out face per source (x2, and the last one also x4); columns:
    bicubic | ours | ground truth."""
    picks: list[tuple[int, int]] = []
    seen: set[str] = set()
    for i, name in enumerate(sources):
        if name not in seen:
            seen.add(name)
            picks.append((i, 2))
    picks = picks[:3] + [(picks[0][0], 4)]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the headline numbers here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="media folder")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--picture", type=Path, default=REPO / "docs" / "sr_side_by_side.png",
                        help="side-by-side PNG to write ('' to skip)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    resolver = load_super_resolver(args.weights)
    if resolver is None:
        print(f"no weights at {args.weights}", file=sys.stderr)
        return 2
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
    probe = cv2.resize(crops.heldout[0], (TILE, TILE), interpolation=cv2.INTER_AREA)
    probe = probe.astype(np.float32) / 255.0
    ms2, best2 = time_upscale(resolver, cv2.resize(probe, (128, 128),
                                                   interpolation=cv2.INTER_AREA), 2, args.repeats)
    ms4, best4 = time_upscale(resolver, cv2.resize(probe, (64, 64),
                                                   interpolation=cv2.INTER_AREA), 4, args.repeats)

    print(f"held-out crops: {len(crops.heldout)} from {sorted(set(crops.heldout_sources))}")
    print(f"{'setting':<14} {'bicubic dB':>10} {'ours dB':>8} {'gain dB':>8} "
          f"{'SSIM bic':>9} {'SSIM ours':>9} {'gain':>8}")
    for key, m in results.items():
        print(f"{key:<14} {m['psnr_bicubic']:>10.2f} {m['psnr_ours']:>8.2f} "
              f"{m['psnr_gain_db']:>+8.2f} {m['ssim_bicubic']:>9.4f} {m['ssim_ours']:>9.4f} "
              f"{m['ssim_gain']:>+8.4f}")
    print(f"ms per 256x256 output: x2 median {ms2:.1f} (best {best2:.1f}), "
          f"x4 median {ms4:.1f} (best {best4:.1f}); 2 torch threads")

    if args.picture and str(args.picture):
        side_by_side(resolver, crops.heldout, crops.heldout_sources, args.picture)
        print(f"wrote {args.picture}")
    if args.json:
        x2, x2d = results["x2_clean"], results["x2_degraded"]
        x4, x4d = results["x4_clean"], results["x4_degraded"]
        summary = {
            "sr_psnr_gain_db": round(x2["psnr_gain_db"], 3),
            "sr_ssim_gain": round(x2["ssim_gain"], 4),
            "sr_ms_per_256": round(ms2, 2),
            "sr_ms_per_256_best": round(best2, 2),
            "sr_psnr_bicubic_db": round(x2["psnr_bicubic"], 3),
            "sr_psnr_ours_db": round(x2["psnr_ours"], 3),
            "sr_degraded_psnr_gain_db": round(x2d["psnr_gain_db"], 3),
            "sr_degraded_ssim_gain": round(x2d["ssim_gain"], 4),
            "sr_x4_psnr_gain_db": round(x4["psnr_gain_db"], 3),
            "sr_x4_ssim_gain": round(x4["ssim_gain"], 4),
            "sr_x4_degraded_psnr_gain_db": round(x4d["psnr_gain_db"], 3),
            "sr_x4_ms_per_256": round(ms4, 2),
            "sr_heldout_crops": len(crops.heldout),
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
