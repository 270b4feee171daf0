"""Batch manifests: the rows of `jobs.csv` as jobs, each checked before anything runs, and the
key of what each job's output depends on.

Manifest (`jobs.csv`, paths relative to the manifest's folder):

    source,target,output,options
    me.jpg,clips/dance.m3dt,me_dance.mp4,
    a.jpg;b.jpg,clips/talk.mp4,ab_talk.mp4,target_face=1;refine=classic;max_frames=100

`source` is one photo or several of the same person separated by `;`; `target` a clip,
image or template (`.m3dt`); `output` a file name inside the output folder; `options`
(optional) `key=value` pairs separated by `;`: the swap options of `JOB_OPTIONS` only, each
checked by `SwapOptions.validate` as the command line checks it. A manifest may come from
someone else, so it can name nothing but inputs, an output name and swap options: where fits
are cached is the batch's `--work-dir`, not a row's.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from morph3d.errors import InputError
from morph3d.io.paths import sha256_file

COLUMNS = ("source", "target", "output")

# SwapOptions fields a manifest row may not set: nothing a row names may be a place to write
# or steer the batch itself (the batch sets these).
_NOT_JOB_OPTIONS = ("quiet", "preview", "work_dir")


def _job_options() -> dict[str, Callable[[str], Any]]:
    """The `SwapOptions` fields a row may set -> the parser of their text, from each field's
    type (a `FaceChoice` by its grammar, an optional value by its inner type)."""
    import typing

    from fitting.choice import FaceChoice, parse_face_choice
    from morph3d.swap.options import FACE_FORMS, SwapOptions

    parsers: dict[Any, Callable[[str], Any]] = {Path: Path, str: str, int: int}
    hints = typing.get_type_hints(SwapOptions)
    table = {}
    for f in fields(SwapOptions):
        if f.name in _NOT_JOB_OPTIONS:
            continue
        kinds = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],)
                 if t is not type(None)]
        if kinds == [FaceChoice]:  # the forms that option takes
            table[f.name] = functools.partial(parse_face_choice, what=f.name.replace("_", " "),
                                              allow=FACE_FORMS[f.name])
            continue
        if len(kinds) != 1 or kinds[0] not in parsers:
            raise TypeError(f"SwapOptions.{f.name}: no manifest parser for {hints[f.name]}")
        table[f.name] = parsers[kinds[0]]
    return table


# Job options: the `SwapOptions` field of that name -> the parser of its text.
JOB_OPTIONS: dict[str, Callable[[str], Any]] = _job_options()
_PATH_OPTIONS = tuple(k for k, parse in JOB_OPTIONS.items() if parse is Path)
_FACE_OPTIONS = tuple(k for k, parse in JOB_OPTIONS.items() if isinstance(parse, functools.partial))


@dataclass
class Job:
    """One row of the manifest. `problem` is why it cannot run (reported as its failure)."""

    row: int
    sources: list[Path]
    target: Path
    output: str
    options: dict[str, str] = field(default_factory=dict)
    problem: str = ""


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """Parse a manifest; structural problems (columns, duplicate outputs) raise InputError,
    a bad row becomes a job with a `problem`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"job manifest not found: {path}")
    base = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read job manifest {path}: {exc}") from None
    reader = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(f"job manifest {path} lacks the column(s) {', '.join(missing)} "
                         f"(it needs source,target,output[,options])")
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for row_number, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue
        job = Job(row=row_number, sources=[], target=Path(), output=row["output"])
        job.sources = [_resolve(base, s) for s in row["source"].split(";") if s.strip()]
        job.target = _resolve(base, row["target"]) if row["target"] else Path()
        try:
            job.options = parse_options(row.get("options", ""), base)
            swap_options(job, None).validate()
            _check_row(job)
        except InputError as exc:
            job.problem = str(exc)
        if job.output in seen:
            raise InputError(f"job manifest {path}: rows {seen[job.output]} and {row_number} "
                             f"both write {job.output}")
        seen[job.output] = row_number
        jobs.append(job)
    if not jobs:
        raise InputError(f"job manifest {path} has no jobs")
    return jobs


def _resolve(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text.strip()))
    return p if p.is_absolute() else base / p


def parse_options(text: str, base: Path) -> dict[str, str]:
    """`key=value;key=value` -> {key: value}, every key and value checked."""
    options: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(";"))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in JOB_OPTIONS:
            raise InputError(f"bad job option {item!r} (known: {', '.join(JOB_OPTIONS)})")
        try:
            parsed = JOB_OPTIONS[key](value)
        except (ValueError, InputError) as exc:
            raise InputError(f"bad value for job option {key}: {value!r} ({exc})") from None
        reference = getattr(parsed, "reference", None)  # a face option's reference photo
        if key in _PATH_OPTIONS or reference is not None:
            value = str(_resolve(base, reference or value))
        options[key] = value
    return options


def _check_row(job: Job) -> None:
    from morph3d.io.images import is_image_path

    name = job.output
    if not name or "/" in name or "\\" in name or name.startswith(".") or name in ("..",):
        raise InputError(f"output {name!r} must be a plain file name inside the output folder")
    if Path(name).suffix.lower() not in (".mp4", ".m4v", ".mov", ".mkv") and not \
            is_image_path(name):
        raise InputError(f"output {name!r} must end in .mp4, .mov, .mkv or an image suffix")
    if not job.sources:
        raise InputError("no source photo given")
    if job.target == Path():
        raise InputError("no target given")


def swap_options(job: Job, work_dir: Path | None, device: str | None = None):
    """The job's `SwapOptions` (quiet; fits cached in the batch's work dir)."""
    from morph3d.swap.options import SwapOptions

    kwargs: dict[str, Any] = {"quiet": True, "work_dir": work_dir}
    if device:
        kwargs["device"] = device
    for key, value in job.options.items():
        kwargs[key] = JOB_OPTIONS[key](value)
    return SwapOptions(**kwargs)


class Digests:
    """Content hashes of input files, each file hashed once per batch."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._cache:
            if not path.is_file():
                raise InputError(f"input not found: {path}")
            self._cache[path] = sha256_file(path)
        return self._cache[path]


def job_key(job: Job, digest: Callable[[Path], str]) -> str:
    """What the output depends on: input contents, options, morph3d version."""
    from morph3d import __version__

    options = dict(sorted(job.options.items()))
    for key, path in reference_options(job).items():
        options[key] = digest(path)
    body = {"sources": [digest(s) for s in job.sources], "target": digest(job.target),
            "options": options, "morph3d": __version__}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def reference_options(job: Job) -> dict[str, Path]:
    """The row's options that name a reference photo (target_face_ref, or a face option
    given as a photo) -> that photo."""
    refs = {}
    for key, value in job.options.items():
        if key == "target_face_ref":
            refs[key] = Path(value)
        elif key in _FACE_OPTIONS:
            reference = JOB_OPTIONS[key](value).reference
            if reference is not None:
                refs[key] = Path(reference)
    return refs
