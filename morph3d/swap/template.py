"""Clip templates (`.m3dt`): everything about a target clip that does not depend on the user.

A template is built once per clip (`morph3d template build clip.mp4 -o clip.m3dt`) and used
wherever a clip is (`morph3d swap --target clip.m3dt`): the swap then skips face detection,
tracking and clip fitting, and only fits the user's photo and renders.

Format: a zip archive (members stored, not recompressed) holding
- `manifest.json`: format name and version, morph3d version, the model signature the fit
  belongs to, the build options (face selection, backend, frame limit), the clip's video
  info (size, fps, frame count, audio presence and codec), the clip's name, size and SHA-256,
  and the SHA-256 of every other member; `template_id` hashes all of that.
- `fit.npz`: the clip's `fitting.params.VideoFit` (tracked, smoothed landmarks of the chosen
  face; one actor identity; per-frame pose, expression and SH lighting; camera).
- `clip<ext>`: the clip's bytes, by default. Frames and audio both come from the original
  clip at swap time, so embedding the clip keeps a template self-contained (one file to copy
  to a render node or to ship through Ray's object store; audio is copied packet for packet
  from it, never re-encoded). With `embed_clip=False` (`--reference-clip`) the template only
  records the clip's path and SHA-256 and the swap looks for it there or beside the template,
  refusing a file whose content differs.

Every member is checked against the manifest when a template is opened; a corrupt or
mismatched template raises `InputError` with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fitting.choice import FaceChoice
from morph3d import __version__
from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write
from morph3d.io.paths import sha256_file
from morph3d.swap.cache import model_signature

TEMPLATE_FORMAT = "morph3d.template"
TEMPLATE_VERSION = 1
TEMPLATE_SUFFIX = ".m3dt"
MANIFEST = "manifest.json"
FIT_MEMBER = "fit.npz"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class Template:
    """An opened, verified template: its manifest, the clip fit and a local clip file."""

    path: Path
    manifest: dict[str, Any]
    fit: Any  # fitting.params.VideoFit
    clip: Path  # a readable file with the clip's exact bytes (extracted or referenced)

    @property
    def frames(self) -> int:
        return int(self.manifest["fit"]["frames"])

    def check_model(self, model) -> None:
        """Refuse a model other than the one the clip was fitted with."""
        want, have = self.manifest["model"], model_signature(model)
        if want != have:
            raise InputError(
                f"template {self.path.name} was fitted with model '{want['name']}' "
                f"({want['build']}, {want['vertices']} vertices); the swap uses "
                f"'{have['name']}' ({have['build']}, {have['vertices']} vertices): "
                f"swap with --model {want['name']} or rebuild the template")



def is_template(path: str | os.PathLike) -> bool:
    """True for a `.m3dt` name or a file that starts like a zip archive (videos never do)."""
    path = Path(path)
    if path.suffix.lower() == TEMPLATE_SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_template(clip: str | os.PathLike, output: str | os.PathLike, options=None,
                   embed_clip: bool = True) -> dict[str, Any]:
    """Detect, track and fit the clip's face (the swap's stages 1-3) and write a template.

    `options` (a `morph3d.swap.options.SwapOptions`) supplies the face selection, model, backend,
    frame limit and work directory (fits are cached there as for a swap). Returns the
    manifest.
    """
    from morph3d.io.media import probe_video
    from morph3d.model.registry import load_model
    from morph3d.swap.fits import fit_clip
    from morph3d.swap.options import SwapOptions

    options = options or SwapOptions()
    clip, output = Path(clip), Path(output)
    if not clip.is_file():
        raise InputError(f"clip not found: {clip}")
    if is_template(clip):
        raise InputError(f"{clip} is already a template")
    if output.suffix.lower() != TEMPLATE_SUFFIX:
        raise InputError(f"a template's name must end in {TEMPLATE_SUFFIX}: {output}")
    if not output.parent.is_dir():
        raise InputError(f"output folder does not exist: {output.parent}")
    if output.resolve() == clip.resolve():
        raise InputError(f"output path {output} is the clip itself")
    info = probe_video(clip)
    model = load_model(options.model)
    fit, runs = fit_clip(clip, model, options)
    frames = fit.num_frames

    fit_bytes = io.BytesIO()
    _save_fit(fit, fit_bytes)
    fit_data = fit_bytes.getvalue()
    clip_sha = sha256_file(clip)
    clip_member = f"clip{clip.suffix.lower()}"
    video = info.to_dict()
    for key in ("path", "metadata"):
        video.pop(key, None)
    ref_sha = (sha256_file(options.target_face_ref) if options.target_face_ref is not None
               else None)
    manifest: dict[str, Any] = {
        "format": TEMPLATE_FORMAT,
        "format_version": TEMPLATE_VERSION,
        "morph3d_version": __version__,
        "model": model_signature(model),
        "fit": {"member": FIT_MEMBER, "frames": frames, "backend": options.backend,
                "target_face": str(options.target_face), "target_face_ref_sha256": ref_sha,
                "max_frames": options.max_frames, "seconds": {r.name: r.seconds for r in runs}},
        "video": video,
        "clip": {"name": clip.name, "size": clip.stat().st_size, "sha256": clip_sha,
                 "embedded": embed_clip, "member": clip_member if embed_clip else None,
                 "path": None if embed_clip else str(clip.resolve())},
        "members": {FIT_MEMBER: hashlib.sha256(fit_data).hexdigest(),
                    **({clip_member: clip_sha} if embed_clip else {})},
    }
    manifest["template_id"] = _template_id(manifest)
    with atomic_write(output, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        z.writestr(FIT_MEMBER, fit_data)
        if embed_clip:
            z.write(clip, clip_member)
    return manifest


def _save_fit(fit, stream: io.BytesIO) -> None:
    """VideoFit.save writes to a path; go through a temporary folder to get its bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="m3dt-") as tmp:
        path = Path(tmp) / FIT_MEMBER
        fit.save(path)
        stream.write(path.read_bytes())


def _template_id(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "template_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest, after checking the format, version and the manifest's own id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"template not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read(MANIFEST))
    except KeyError:
        raise InputError(f"{path} is not a morph3d template (no {MANIFEST})") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"template {path} is corrupt ({_reason(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != TEMPLATE_FORMAT:
        raise InputError(f"{path} is not a morph3d template")
    version = manifest.get("format_version")
    if version != TEMPLATE_VERSION:
        raise InputError(f"template {path} has format version {version}, this morph3d reads "
                         f"{TEMPLATE_VERSION}: rebuild it with `morph3d template build`")
    if manifest.get("template_id") != _template_id(manifest):
        raise InputError(f"template {path} is corrupt (its manifest does not match its id)")
    _check_manifest(manifest, path)
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")
_CLIP_MEMBER = re.compile(r"clip(\.[0-9a-z_-]{1,16})?")


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest whose names or digests could steer a file anywhere: its member
    names, the clip's name and every digest are used to build paths when the template is
    opened, so they are checked before anything is read or written. The id above only shows
    the manifest is self-consistent, not that whoever made it is honest."""

    def bad(what: str) -> InputError:
        return InputError(f"template {path} is corrupt or crafted ({what})")

    fit, clip, members = manifest.get("fit"), manifest.get("clip"), manifest.get("members")
    if not (isinstance(fit, dict) and isinstance(clip, dict) and isinstance(members, dict)):
        raise bad("fit, clip or members missing from its manifest")
    if fit.get("member") != FIT_MEMBER:
        raise bad(f"the fit member must be {FIT_MEMBER}, not {fit.get('member')!r}")
    for key in ("frames", "max_frames"):
        value = fit.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1
                or key == "max_frames" and value is None):
            raise bad(f"fit {key} {value!r}")
    model = manifest.get("model")
    if not (isinstance(model, dict) and {"name", "build", "vertices"} <= set(model)):
        raise bad("model signature missing from its manifest")
    name = clip.get("name")
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name):
        raise bad(f"clip name {name!r} is not a plain file name")
    size = clip.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad(f"clip size {size!r}")
    for what, digest in [("clip", clip.get("sha256")), *members.items()]:
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise bad(f"the checksum of {what} is not 64 lowercase hex digits: {digest!r}")
    expected = {FIT_MEMBER}
    if clip.get("embedded") is True:
        member = clip.get("member")
        if not (isinstance(member, str) and _CLIP_MEMBER.fullmatch(member)
                and member == f"clip{Path(name).suffix.lower()}"):
            raise bad(f"embedded clip member {member!r}")
        if members.get(member) != clip["sha256"]:
            raise bad("the embedded clip's checksums disagree")
        expected.add(member)
    elif clip.get("embedded") is False:
        if not isinstance(clip.get("path"), str):
            raise bad(f"referenced clip path {clip.get('path')!r}")
    else:
        raise bad(f"clip.embedded {clip.get('embedded')!r}")
    if set(members) != expected:
        raise bad(f"members {sorted(members)}, expected {sorted(expected)}")


def open_template(path: str | os.PathLike, work_dir: str | os.PathLike | None = None
                  ) -> Template:
    """Verify every member, load the fit and make the clip available as a local file.

    An embedded clip is extracted once into `work_dir/templates/` (named by its hash, written
    atomically after its hash is checked) and reused by later swaps.
    """
    from morph3d.io.paths import cache_dir

    path = Path(path)
    manifest = read_manifest(path)
    work = Path(work_dir) if work_dir is not None else cache_dir() / "work"
    clip_info = manifest["clip"]
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            for member, digest in manifest["members"].items():
                if member not in names:
                    raise InputError(f"template {path} is corrupt (member {member} missing)")
                if member == clip_info.get("member"):
                    continue  # hashed while extracting, below
                if hashlib.sha256(z.read(member)).hexdigest() != digest:
                    raise InputError(f"template {path} is corrupt (checksum of {member} "
                                     "does not match)")
            fit_data = z.read(manifest["fit"]["member"])
            if clip_info["embedded"]:
                clip = _extract_clip(z, path, clip_info, work / "templates")
            else:
                clip = _referenced_clip(path, clip_info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"template {path} is corrupt ({_reason(exc)})") from None
    fit = _load_fit(fit_data, work, path)
    if fit.num_frames != int(manifest["fit"]["frames"]):
        raise InputError(f"template {path} is corrupt (fit frame count disagrees)")
    return Template(path=path, manifest=manifest, fit=fit, clip=clip)


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _load_fit(data: bytes, work: Path, path: Path):
    import tempfile

    from fitting.params import VideoFit

    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=".m3dt-") as tmp:
        fit_path = Path(tmp) / FIT_MEMBER
        fit_path.write_bytes(data)
        try:
            return VideoFit.load(fit_path)
        except InputError as exc:
            raise InputError(f"template {path} is corrupt ({exc})") from None


def _extract_clip(z: zipfile.ZipFile, path: Path, clip_info: dict, folder: Path) -> Path:
    suffix = Path(clip_info["name"]).suffix.lower()
    target = folder / f"{clip_info['sha256'][:24]}{suffix}"
    # `read_manifest` allows only hex digests and plain names; this keeps it so.
    if target.parent != folder or target.name.startswith("."):
        raise InputError(f"template {path} is corrupt or crafted (clip member name)")
    if target.is_file() and target.stat().st_size == clip_info["size"]:
        return target  # only ever written whole, after its hash was checked
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as out, z.open(clip_info["member"]) as src:
        h = hashlib.sha256()
        while block := src.read(1 << 20):
            h.update(block)
            out.write(block)
        if h.hexdigest() != clip_info["sha256"]:
            raise InputError(f"template {path} is corrupt (checksum of the embedded clip "
                             "does not match)")
    return target


def _referenced_clip(path: Path, clip_info: dict) -> Path:
    candidates = [Path(clip_info["path"]), path.parent / clip_info["name"]]
    seen_other = None
    for candidate in candidates:
        if candidate.is_file():
            if (candidate.stat().st_size == clip_info["size"]
                    and sha256_file(candidate) == clip_info["sha256"]):
                return candidate
            seen_other = candidate
    if seen_other is not None:
        raise InputError(f"template {path.name} was built from a different {clip_info['name']} "
                         f"than {seen_other} (content hash differs): rebuild the template")
    raise InputError(f"template {path.name} needs its clip {clip_info['name']}: not found at "
                     f"{clip_info['path']} nor beside the template")


def template_for_swap(path: Path, options):
    """Open a template for `morph3d.swap.driver.swap`: returns (template, options adjusted).

    The face was chosen when the template was built, so the face-selection options are
    ignored (with a note); the frame limit is clamped to the frames the template fitted.
    """
    template = open_template(path, options.work_dir)
    notes = []
    if options.target_face != FaceChoice() or options.target_face_ref is not None:
        notes.append("--target-face/--target-face-ref ignored: the template's face was "
                     "chosen when it was built")
    limit = template.manifest["fit"]["max_frames"]
    max_frames = options.max_frames
    if limit is not None and (max_frames is None or max_frames > template.frames):
        max_frames = template.frames
        notes.append(f"template covers the first {template.frames} frames only")
    return template, replace(options, max_frames=max_frames), notes
