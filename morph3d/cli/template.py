"""`morph3d template build clip.mp4 -o clip.m3dt` and `morph3d template info clip.m3dt`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from morph3d.cli.arguments import add_clip_options


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="prebuild a clip's face track and fit (a template)")
    sub = p.add_subparsers(dest="template_command", metavar="ACTION")

    build = sub.add_parser("build", help="detect, track and fit a clip's face once")
    build.add_argument("clip", type=Path, help="target clip (or image)")
    build.add_argument("-o", "--output", required=True, type=Path, help="template (.m3dt)")
    add_clip_options(build, "which face: largest (default), N (0 = largest), center, the "
                     "face nearest pixel X,Y, or REF.jpg (the person in that photo)")
    build.add_argument("--reference-clip", action="store_true",
                       help="record the clip's path and hash instead of embedding its bytes "
                            "(the clip must then be present, unchanged, at swap time)")
    build.set_defaults(func=run_build)

    info = sub.add_parser("info", help="verify a template and print its manifest")
    info.add_argument("template", type=Path)
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_build(args: argparse.Namespace) -> int:
    from morph3d.errors import InputError
    from morph3d.io.outputs import check_creatable_dir, check_outputs
    from morph3d.io.paths import cache_dir
    from morph3d.swap.options import SwapOptions
    from morph3d.swap.template import build_template

    # Before the clip is fitted: the template may be neither the clip nor the reference
    # photo, its folder must exist and be writable, and so must the work folder.
    for path, what in ((args.clip, "clip"), (args.target_face_ref, "reference photo")):
        if path is not None and not path.is_file():
            raise InputError(f"{what} not found: {path}")
    check_outputs((args.clip, args.target_face_ref), (args.output,))
    check_creatable_dir(args.work_dir or cache_dir() / "work", "work folder")
    options = SwapOptions(target_face=args.target_face,
                          target_face_ref=args.target_face_ref, model=args.model,
                          backend=args.backend, max_frames=args.max_frames,
                          work_dir=args.work_dir, quiet=args.quiet)
    manifest = build_template(args.clip, args.output, options,
                              embed_clip=not args.reference_clip)
    fit = manifest["fit"]
    print(f"wrote {args.output}: {fit['frames']} frames fitted, "
          f"clip {'embedded' if manifest['clip']['embedded'] else 'referenced'}, "
          f"id {manifest['template_id']}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from morph3d.swap.template import open_template

    template = open_template(args.template)
    m = template.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    video, clip = m["video"], m["clip"]
    print(f"template:  {args.template} (id {m['template_id']}, format {m['format_version']}, "
          f"morph3d {m['morph3d_version']})")
    print(f"clip:      {clip['name']} ({'embedded' if clip['embedded'] else clip['path']}), "
          f"sha256 {clip['sha256'][:16]}...")
    print(f"video:     {video['width']}x{video['height']} at {video['fps']} fps, "
          f"{video['frame_count']} frames, audio: {video['has_audio']}")
    print(f"fit:       {m['fit']['frames']} frames, model {m['model']['name']} "
          f"({m['model']['build']}), face {m['fit']['target_face']}")
    print("checksums: ok")
    return 0
