"""Identity of swaps made from turned-head source photos: classical vs neural texture completion.

Usage: python tools/bench_completion_turned.py --completion-weights W.npz [--json out.json]
           [--data ../shared/media] [--video nggyup.mp4] [--source-frames 176 185 242 275]
           [--reference-frames 138 203 216] [--frames 66] [--noise-seeds 3]

Why: a frontal source photo leaves the completion almost nothing with a truth to fill (the
texels it never saw are beyond the silhouette or in the hidden eye / mouth openings), so the
net's identity effect on swaps from frontal photos is nil by design (BENCHMARKS.md, "Texture
completion"). A photo with a turned head leaves a whole cheek to the mirror and the net.

Sources: frames of --video (default nggyup.mp4, whose singer is in no training file of a net
trained with ``--holdout nggyup.*`` added) where the head is turned, written as PNG under
--work (git-ignored `out/`); references: near-frontal frames of the same singer. Each source
is swapped into the first --frames frames of --target (orig.webm) with ``refine=neural``
(neural super-resolution in every run) with: the classical completion (weights hidden), the
net (--completion-weights), and --noise-seeds runs of the classical fill plus an invisible
perturbation of the texels the photo did not see (Gaussian-blurred noise, --noise-rms RMS,
weighted like the net's correction), the noise of the measurement. Every run fits its
source afresh and shares the clip fit. Each output frame's face (matched to the original's
as `morph3d.evaluate` does) gets one dlib embedding; its distance to the source frame's
embedding is evaluate's ``id_dist_source`` (lower = more like the source), and its mean
distance to the reference frames' embeddings says whether the completed far cheek looks
like the same man seen from the front. Paired per-frame differences give standard errors.
Also reported per source: the share of the face skin (UV) the photo did not see (confidence
< 0.5 after the swap's hidden openings) and the net's mean change to the classical fill there.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "media"


def extract_frames(video: Path, indices: list[int], folder: Path, prefix: str
                   ) -> dict[int, Path]:
    """Write the video's frames `indices` as PNG files; returns {index: path}."""
    from morph3d.io.media import iter_frames

    folder.mkdir(parents=True, exist_ok=True)
    paths = {i: folder / f"{video.stem}_{prefix}_f{i:04d}.png" for i in indices}
    for frame in iter_frames(video, 0, max(indices) + 1):
        if frame.index in paths:
            cv2.imwrite(str(paths[frame.index]), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    missing = [i for i, p in paths.items() if not p.is_file()]
    if missing:
        raise SystemExit(f"frames {missing} not found in {video}")
    return paths


def photo_yaw_deg(path: Path) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the largest face in a photo (`morph3d.evaluate`'s pose)."""
    from fitting.detection import detect_faces
    from fitting.faces import IBUG68
    from morph3d.evaluate.measures import head_pose_deg
    from morph3d.evaluate.runner import LANDMARK_BACKEND
    from morph3d.io.images import read_image

    image = read_image(path)
    faces = detect_faces(image, LANDMARK_BACKEND)
    k = int(np.argmax(faces.areas()))
    pose = head_pose_deg(faces.landmarks[IBUG68][k], image.shape[:2])
    return float(pose[0]), float(pose[1])


def output_embeddings(target: Path, output: Path, frames: int) -> np.ndarray:
    """(frames, 128) dlib embeddings of the output's face matched to the original's largest
    face, frame by frame, as `morph3d.evaluate.runner.analyse_chunk` pairs them (NaN rows
    where no output face matches)."""
    from morph3d.evaluate.runner import ChunkJob, analyse_chunk
    from morph3d.io.media import probe_video

    info = probe_video(target)
    job = ChunkJob(target=str(target), output=str(output), reencoded=None, start=0, stop=frames,
                   source_embedding=np.zeros(128), target_face="largest",
                   target_size=(info.height, info.width))
    result = np.full((frames, 128), np.nan)
    for record in analyse_chunk(job):
        if record.output_embedding is not None:
            result[record.index] = record.output_embedding
    return result


def perturbed_classic(rms: float, seed: int):
    """A stand-in for `complete_texture` giving the classical fill plus Gaussian-blurred
    noise of `rms` on the texels the photo did not see (weight clip(1 - conf / 0.5, 0, 1),
    the net's own), which no eye can see: the measurement's reaction to any change."""
    import morph3d.neural.completion as cn

    original = cn.complete_texture

    def complete(texture, confidence, model, method="neural", weights=None):
        done, _ = original(texture, confidence, model, "classic")
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(done.texture.shape).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), 4.0)
        noise *= rms / max(float(noise.std()), 1e-12)
        weight = np.clip(1.0 - np.asarray(confidence, np.float32) / 0.5, 0.0, 1.0)[..., None]
        done.texture = np.clip(done.texture + noise * weight, 0.0, 1.0).astype(np.float32)
        return done, "classic"

    return complete


def run_swap(source: Path, target: Path, output: Path, cache: Path, frames: int, label: str,
             weights: Path, rms: float) -> np.ndarray:
    """Swap with the completion `label` (classic / neural / noiseN); returns the source
    fit's completed UV texture and its confidence stacked (H x W x 4)."""
    import morph3d.neural.completion as cn
    from fitting.params import VideoFit
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    for old in cache.glob("source-*.npz"):  # every run fits its source afresh
        old.unlink()
    shipped, complete = cn.DEFAULT_WEIGHTS, cn.complete_texture
    cn.DEFAULT_WEIGHTS = weights if label == "neural" else cache / "absent.npz"
    if label.startswith("noise"):
        cn.complete_texture = perturbed_classic(rms, int(label[5:]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            swap([source], target, output, SwapOptions(refine="neural", quiet=True,
                                                       max_frames=frames, work_dir=cache))
    finally:
        cn.DEFAULT_WEIGHTS, cn.complete_texture = shipped, complete
    fit = VideoFit.load(next(cache.glob("source-*.npz")))
    return np.dstack([fit.identity.texture, fit.identity.confidence])


def main(argv: list[str] | None = None) -> int:
    import torch

    import morph3d.neural.completion as cn
    from morph3d.evaluate.runner import source_face_embedding
    from morph3d.io.atomic import atomic_write_text
    from morph3d.model.registry import load_model
    from morph3d.neural.texture_completion import skin_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="media folder")
    parser.add_argument("--video", default="nggyup.mp4", help="video the sources come from")
    parser.add_argument("--source-frames", type=int, nargs="+", default=[176, 185, 242, 275],
                        help="frames of --video with a turned head (the swap sources)")
    parser.add_argument("--reference-frames", type=int, nargs="+", default=[138, 203, 216],
                        help="near-frontal frames of the same person (identity references)")
    parser.add_argument("--target", default="orig.webm", help="clip the sources go into")
    parser.add_argument("--frames", type=int, default=66, help="frames of --target per swap")
    parser.add_argument("--completion-weights", type=Path, default=None,
                        help="completion weights (default: the shipped ones; for a held-out "
                             "test, a net trained with --holdout nggyup.* added)")
    parser.add_argument("--noise-seeds", type=int, default=3,
                        help="classical + invisible perturbation runs per source (0: none)")
    parser.add_argument("--noise-rms", type=float, default=0.003)
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench_completion_turned")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model("default")
    weights = Path(args.completion_weights or cn.DEFAULT_WEIGHTS).resolve()
    net = cn.load_completion_net(weights)
    if net is None:
        raise SystemExit(f"no completion weights at {weights}")
    held = net.manifest.get("data", {}).get("holdout_patterns", [])
    print(f"weights {weights} (sha256 {str(net.manifest.get('sha256'))[:12]}), held out: "
          f"{' '.join(held)}")

    started = time.perf_counter()
    video, target = args.data / args.video, args.data / args.target
    sources = extract_frames(video, args.source_frames, args.work / "frames", "turned")
    refs = extract_frames(video, args.reference_frames, args.work / "frames", "frontal")
    ref_emb = {i: source_face_embedding(p)[0] for i, p in refs.items()}
    poses = {i: photo_yaw_deg(p) for i, p in {**sources, **refs}.items()}
    for i, (yaw, pitch) in sorted(poses.items()):
        kind = "source" if i in sources else "reference"
        print(f"{args.video} frame {i} ({kind}): yaw {yaw:+.1f} deg, pitch {pitch:+.1f} deg")
    ref_ref = [float(np.linalg.norm(ref_emb[a] - ref_emb[b]))
               for a in ref_emb for b in ref_emb if a < b]

    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    labels = ["classic", "neural"] + [f"noise{s}" for s in range(args.noise_seeds)]
    rows: dict[str, dict] = {}
    for index, source in sources.items():
        self_emb = source_face_embedding(source)[0]
        row: dict = {"yaw_deg": round(poses[index][0], 1), "pitch_deg": round(poses[index][1], 1),
                     "source_to_refs": round(float(np.mean(
                         [np.linalg.norm(self_emb - e) for e in ref_emb.values()])), 4)}
        per_frame: dict[str, dict[str, np.ndarray]] = {}
        textures: dict[str, np.ndarray] = {}
        for label in labels:
            output = args.work / f"{source.stem}_{label}.mp4"
            textures[label] = run_swap(source, target, output, cache, args.frames, label,
                                       weights, args.noise_rms)
            emb = output_embeddings(target, output, args.frames)
            d_self = np.linalg.norm(emb - self_emb, axis=1)
            d_ref = np.mean([np.linalg.norm(emb - e, axis=1) for e in ref_emb.values()], axis=0)
            per_frame[label] = {"self": d_self, "refs": d_ref}
            row[label] = {"self": round(float(np.nanmean(d_self)), 4),
                          "refs": round(float(np.nanmean(d_ref)), 4)}
            print(f"frame {index} {label:<8} id distance to itself {np.nanmean(d_self):.4f}, "
                  f"to the frontal references {np.nanmean(d_ref):.4f}", flush=True)
        # Face-skin texels the photo did not see (confidence < 0.5, the openings hidden as
        # the swap hides them): where the net may correct the classical fill.
        conf = textures["classic"][..., 3]
        size = conf.shape[0]
        face_skin = skin_rows(size)[:, None] & (cn.uv_features(model, size)[0] > 0.5)
        unseen = (conf < 0.5) & face_skin
        change = np.abs(textures["neural"][..., :3] - textures["classic"][..., :3]).mean(-1)
        row["unseen_face_skin"] = round(float(unseen.sum() / face_skin.sum()), 4)
        row["unseen_face_skin_below_0.1"] = round(float(
            ((conf < 0.1) & face_skin).sum() / face_skin.sum()), 4)
        row["net_change_unseen"] = round(float(change[unseen].mean()), 4)
        for label in labels[1:]:
            for which in ("self", "refs"):
                d = per_frame[label][which] - per_frame["classic"][which]
                d = d[np.isfinite(d)]
                row[label][f"{which}_diff"] = round(float(d.mean()), 4)
                row[label][f"{which}_sem"] = round(float(d.std() / np.sqrt(max(len(d), 1))), 4)
                row[label][f"{which}_closer"] = round(float(np.mean(d < 0)), 3)
        rows[str(index)] = row
        print(f"frame {index}: face skin unseen {row['unseen_face_skin']:.1%} "
              f"({row['unseen_face_skin_below_0.1']:.1%} below confidence 0.1), net changes "
              f"it by "
              f"{change[unseen].mean():.4f}; neural - classic: to itself "
              f"{row['neural']['self_diff']:+.4f} (s.e. {row['neural']['self_sem']:.4f}), to "
              f"the references {row['neural']['refs_diff']:+.4f} "
              f"(s.e. {row['neural']['refs_sem']:.4f})", flush=True)
    shutil.rmtree(cache, ignore_errors=True)

    summary = {
        "weights": str(weights), "weights_sha256": net.manifest.get("sha256"),
        "holdout_patterns": held, "video": args.video, "target": args.target,
        "frames": args.frames, "reference_frames": args.reference_frames,
        "reference_pairwise_id_dist": [round(d, 4) for d in ref_ref],
        "noise_rms": args.noise_rms, "per_source": rows,
        "machine": f"{platform.machine()} {platform.python_version()}",
        "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1),
    }
    for label in labels:
        for which in ("self", "refs"):
            summary[f"{label}_{which}"] = round(float(np.mean(
                [r[label][which] for r in rows.values()])), 4)
            if label != "classic":
                summary[f"{label}_{which}_diff"] = round(float(np.mean(
                    [r[label][f"{which}_diff"] for r in rows.values()])), 4)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_source"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
