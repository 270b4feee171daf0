"""The swap's options and summary, and the checks on its paths done before any work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from fitting.choice import ALL_FORMS, FaceChoice, parse_face_choice
from morph3d.errors import InputError
from morph3d.io.paths import sha256_file

# Cache format of the work folder. 2: landmarks carry the shot cuts, fits are keyed by the
# model build; 3: repeated frames are held; 4: a clip's face is chosen among mediapipe's
# tracks whatever the landmark backend.
WORK_FORMAT = 4
# Source fits only. 2: non-skin texels above the brows hidden (`hide_forehead_occluders`);
# 3: highlights toned down in the albedo (`fitting.lighting.compress_highlights`);
# 4: a sideways or upside-down photo measured upright (`fitting.choice.upright_turns`).
SOURCE_FORMAT = 4
VIDEO_OUTPUT_SUFFIXES = (".mkv", ".m4v", ".mov", ".mp4")  # what media.VideoWriter writes
# The face options and the forms of `fitting.choice` each takes beyond one face by box.
FACE_FORMS: dict[str, tuple[str, ...]] = {"target_face": ALL_FORMS, "source_face": ("reference",)}


@dataclass(frozen=True)
class SwapOptions:
    """Every option of one swap, checked when made (`validate`): a bad value never reaches
    any work. Frozen: a changed copy is `dataclasses.replace(options, ...)`, checked again.
    `target_face` and `source_face` may be given as text (`fitting.choice` grammar); they are
    kept parsed. A reference photo given as `target_face` is kept as `target_face_ref`."""

    # Which of the target's faces to replace; "all": every face track of the clip.
    target_face: FaceChoice = field(default_factory=FaceChoice)
    target_face_ref: Path | None = None  # a photo of the person to replace
    # Which face of each source photo is the user (the largest, N, center, X,Y or the face
    # most like a reference photo's), chosen the same way for every landmark backend.
    source_face: FaceChoice = field(default_factory=FaceChoice)
    model: str = "default"
    backend: str = "mediapipe"  # landmark backend
    device: str = "cpu"
    renderer: str | None = None  # render backend (None: MORPH3D_RENDERER or auto)
    # What fills the source texture's unseen texels: "neural", the completion net (the
    # classical fill, with a note, when its weights are missing), or "classic".
    refine: str = "neural"
    work_resolution: int = 256  # size in pixels of the face crop the transfer works at
    # What in front of the face is kept: "colour", what is not skin-coloured (hair,
    # microphones, ...); "hands", also hands found by shape (mediapipe's hand landmarks: a
    # hand has the face's skin colour). Not the default: it costs more CPU per frame than
    # the render loop may lose (BENCHMARKS.md), and a clip without a hand over a face comes
    # out the same.
    occluders: str = "colour"
    # H.264 quality of a video output (x264 CRF, 0 = lossless, 51 = worst). 14 keeps the
    # detail that CRF 18 took from bearded / textured faces (BENCHMARKS.md, swap benchmark):
    # mark.jpg on orig.webm scores identity 0.386 instead of 0.390, at 1.30 MB for the clip
    # whose original is 1.39 MB (CRF 18: 0.81 MB).
    crf: int = 14
    quiet: bool = False
    preview: Path | None = None
    max_frames: int | None = None
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        target = parse_face_choice(self.target_face, "target face", FACE_FORMS["target_face"])
        if target.rule == "reference":
            if self.target_face_ref is not None:
                raise InputError("give the target's reference photo once: as target face or "
                                 "as target face ref")
            object.__setattr__(self, "target_face_ref", Path(target.reference or ""))
            target = FaceChoice()
        object.__setattr__(self, "target_face", target)
        object.__setattr__(self, "source_face",
                           parse_face_choice(self.source_face, "source face",
                                             FACE_FORMS["source_face"]))
        self.validate()

    def validate(self) -> SwapOptions:
        """Check every option as the command line does, in one line each (`InputError`),
        without any work (options may come from text argparse never saw: a batch manifest).
        Runs on construction; returns `self`."""
        from fitting.detection import BACKEND_NAMES

        def whole(name: str, value: object, low: int, high: int | None = None) -> None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be a whole number, got {value!r}")
            if value < low or (high is not None and value > high):
                limit = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise InputError(f"{name} must be {limit}, got {value}")

        if not isinstance(self.target_face, FaceChoice):
            raise InputError(f"target face takes a choice, not {self.target_face!r}")
        if not isinstance(self.source_face, FaceChoice) or self.source_face.rule == "all":
            raise InputError(f"source face takes one face, not {self.source_face!s}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"model must be a name or a file, got {self.model!r}")
        backend = str(self.backend).strip().lower().replace("_", "-")
        if backend not in (*BACKEND_NAMES, "fan"):
            raise InputError(f"unknown landmark backend {self.backend!r} "
                             f"(choose one of {', '.join(BACKEND_NAMES)})")
        kind, _, index = str(self.device).strip().lower().partition(":")
        if not ((kind == "cpu" and not index)
                or (kind == "cuda" and (not index or index.isdigit()))):
            raise InputError(f"unknown device {self.device!r} (cpu, cuda or cuda:N)")
        if self.renderer is not None and str(self.renderer).strip().lower() != "auto":
            from render.backends import BACKEND_NAMES as RENDERERS

            if str(self.renderer).strip().lower() not in RENDERERS:
                raise InputError(f"unknown renderer {self.renderer!r} "
                                 f"(choose one of {', '.join(RENDERERS)} or auto)")
        if self.refine not in ("neural", "classic"):
            raise InputError(f"refine takes neural or classic, not {self.refine!r}")
        if self.occluders not in ("colour", "hands"):
            raise InputError(f"occluders takes colour or hands, not {self.occluders!r}")
        whole("work_resolution", self.work_resolution, 1)
        whole("crf", self.crf, 0, 51)
        if self.max_frames is not None:
            whole("max_frames", self.max_frames, 1)
        return self


@dataclass
class SwapSummary:
    output: str
    frames: int = 0
    frames_swapped: int = 0
    frames_without_face: int = 0
    frames_skipped_corrupt: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    fps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    refine: str = "classic"
    faces: int = 1  # face tracks swapped (more than one with target face "all")
    # Frames that kept the original face, by why: "no face" (none of the chosen faces was
    # found in the frame), "face not fitted" (found, but its fit failed).
    frames_kept_original: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Stage 1: inputs
# ---------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """A short content key for cache folder names (the first 20 hex digits of SHA-256)."""
    return sha256_file(path)[:20]


def check_paths(sources: list[Path], target: Path, output: Path,
                inputs: tuple[Path, ...] = (), outputs: tuple[Path, ...] = ()) -> None:
    """Fail early, in one line, on anything that would fail later (after minutes of fitting).

    `inputs`: other files read (a reference photo); `outputs`: other files written (preview,
    summary). The outputs go through the one guard, `morph3d.io.outputs.check_outputs`: none
    may be an input (symlinks and hard links included), each folder must exist and be
    writable."""
    from morph3d.io.outputs import check_outputs

    all_inputs = [*sources, target, *inputs]
    for p in all_inputs:
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir():
            raise InputError(f"input is a folder, not a file: {p}")
    check_outputs(all_inputs, (output, *outputs))


def output_kind(target_is_image: bool, output: Path) -> None:
    from morph3d.io.images import is_image_path

    if target_is_image and not is_image_path(output):
        raise InputError(f"the target is an image, so the output must be one too: {output}")
    if not target_is_image and is_image_path(output):
        raise InputError(f"the target is a video, so the output must be a video: {output}")
    if not target_is_image and output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
        raise InputError(f"unsupported video output extension '{output.suffix}' "
                         f"({', '.join(VIDEO_OUTPUT_SUFFIXES)}): {output}")
