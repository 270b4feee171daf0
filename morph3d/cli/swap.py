"""`morph3d swap --source me.jpg --target clip.mp4 -o out.mp4`: the main job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from morph3d.cli.arguments import add_clip_options, positive_int
from morph3d.swap.stages import StageHook


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="put the face from a photo into a clip or image")
    p.add_argument("--source", "-s", action="append", required=True, type=Path,
                   help="photo of the user (repeat for several photos of the same person)")
    p.add_argument("--target", "-t", required=True, type=Path,
                   help="clip, image or clip template (.m3dt) whose face is replaced")
    p.add_argument("-o", "--output", required=True, type=Path, help="output video or image")
    add_clip_options(p, "which face to replace: largest (default), N (0 = largest), center, "
                     "the face nearest pixel X,Y, REF.jpg (the person in that photo), or all "
                     "(every face of the clip)")
    p.add_argument("--face", default="auto",
                   help="which face of the source photo(s) is the user: auto (the largest, "
                   "the same face for every backend), N (0 = largest), center, the face "
                   "nearest pixel X,Y, or REF.jpg (the face most like the one in that photo)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--renderer", default=None, help="torch | nvdiffrast | pytorch3d")
    p.add_argument("--refine", default="neural", choices=("neural", "classic"),
                   help="what fills the skin the source photo did not show: neural, the "
                   "texture-completion net (the classical fill when its weights are missing); "
                   "classic, mirroring from the seen side + pull-push inpainting")
    p.add_argument("--work-resolution", type=positive_int, default=256,
                   help="size in pixels of the face crop the transfer works at")
    p.add_argument("--occluders", default="colour", choices=("colour", "hands"),
                   help="what in front of the face is kept: colour, what is not skin-coloured "
                   "(hair, microphones); hands, also hands found by shape (slower)")
    p.add_argument("--crf", type=int, default=14,
                   help="H.264 quality of a video output: 0 (lossless) .. 51; lower is larger")
    # Accepted and ignored: finished stages are always reused from the work directory (keyed
    # by content); README's resumed runs still name it.
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: always on (its landmarks and fits are "
                   "reused from the work directory); the render pass starts again")
    p.add_argument("--preview", type=Path, help="write a source | original | swapped PNG")
    p.add_argument("--summary-json", type=Path, help="write the run summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, hook: StageHook | None = None) -> int:
    """`hook`: a `morph3d.swap.stages.StageHook` for tools that measure the stages."""
    from morph3d.devices import check_device
    from morph3d.swap.driver import swap, write_summary
    from morph3d.swap.options import SwapOptions, check_paths

    # Everything that could fail late is found out now, not after the whole run: every
    # output (the summary too, which is written after the swap), the options, the device.
    # The outputs first: their guard also clears what a killed run left, whatever else is
    # wrong with this one. A file the face options name is an input, whatever it turns
    # out to be.
    named = tuple(Path(v) for v in (args.target_face_ref, args.face)
                  if v is not None and Path(v).is_file())
    check_paths(args.source, args.target, args.output, inputs=named,
                outputs=tuple(p for p in (args.preview, args.summary_json) if p is not None))
    options = SwapOptions(
        target_face=args.target_face, target_face_ref=args.target_face_ref,
        source_face=args.face, model=args.model,
        backend=args.backend, device=args.device, renderer=args.renderer, refine=args.refine,
        work_resolution=args.work_resolution, occluders=args.occluders,
        crf=args.crf, quiet=args.quiet,
        preview=args.preview, max_frames=args.max_frames, work_dir=args.work_dir)
    check_device(args.device)

    summary = swap(args.source, args.target, args.output, options, hook=hook)
    if args.summary_json:
        write_summary(args.summary_json, summary)
    for note in summary.notes:
        print(f"morph3d: note: {note}", file=sys.stderr)
    if not args.quiet:
        print(json.dumps(summary.to_dict(), indent=2))
    return 0
