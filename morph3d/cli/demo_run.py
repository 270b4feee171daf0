"""The embedded demo: everything it needs ships inside installed packages.

- source: matplotlib's bundled `grace_hopper.jpg`;
- target: a short clip made here from scikit-image's bundled `astronaut.png`: the model is
  fitted to the photo and re-animated (a head turn, a smile, an open mouth, a blink) with
  the photo's own texture, over the photo, with a synthetic audio track (a few tones) so
  that the audio pass-through shows;
- then `morph3d swap` puts Grace Hopper's face into that clip.
`--real` runs `mark.jpg` into `nggyup.mp4` from `../shared/media` instead.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from morph3d.errors import InputError, Morph3dError
from morph3d.io.atomic import default_file_mode
from morph3d.io.outputs import (
    check_creatable_dir,
    check_outputs,
    create_locked_temp,
    temp_path_beside,
)
from morph3d.io.paths import bundled_source, bundled_target_photo

DEMO_FPS = 24
DEMO_FRAMES = 48


def animation(frames: int = DEMO_FRAMES) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-frame extra head rotation (axis-angle, radians) and expression weights."""
    t = np.linspace(0.0, 1.0, frames)
    yaw = np.deg2rad(18.0) * np.sin(2 * np.pi * t)
    pitch = np.deg2rad(5.0) * np.sin(4 * np.pi * t)
    rotation = np.stack([pitch, yaw, np.zeros_like(t)], 1)

    def pulse(centre: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((t - centre) / width) ** 2)

    expressions = {
        "jawOpen": 0.6 * pulse(0.3, 0.07),
        "mouthSmileLeft": 0.8 * pulse(0.65, 0.08),
        "mouthSmileRight": 0.8 * pulse(0.65, 0.08),
        "eyeBlinkLeft": pulse(0.85, 0.02),
        "eyeBlinkRight": pulse(0.85, 0.02),
    }
    return rotation, expressions


def make_target_clip(path: Path, model, log=print) -> Path:
    """Fit the astronaut photo and re-animate it into a short clip with audio."""
    import av

    from fitting.photo import fit_photo
    from morph3d.io.images import read_image
    from morph3d.neural.texture_completion import complete_uv_texture
    from render import render_mesh
    from render.camera import axis_angle_to_matrix

    photo = read_image(bundled_target_photo())
    h, w = photo.shape[:2]
    log("demo: fitting the model to scikit-image's astronaut.png")
    fit = fit_photo(photo, model)[0]
    base_rotation = torch.as_tensor(fit.faces.rotation[0], dtype=torch.float32)
    extra_rotation, expressions = animation()
    # The photo saw one side of a head: the texels it did not see (behind the ears, under
    # the jaw) are filled from their mirror and their surroundings, as the swap's own
    # source texture is, so the head's turn shows skin there, not black.
    texture = torch.from_numpy(complete_uv_texture(
        fit.identity.texture, fit.identity.confidence).texture.astype(np.float32))
    ident = torch.from_numpy(fit.identity.coefficients[None])
    background = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]
    # The outputs' own temporary name, locked while written: a killed demo's leftover is
    # removed by the next run (`morph3d.io.outputs.remove_stale_temps`).
    tmp = temp_path_beside(path, "part")
    lock = create_locked_temp(tmp)
    try:
        with av.open(str(tmp), "w") as container:
            video = container.add_stream("libx264", rate=DEMO_FPS)
            video.width, video.height, video.pix_fmt = w, h, "yuv420p"
            video.options = {"crf": "18", "preset": "veryfast"}
            audio = container.add_stream("aac", rate=44100)
            audio.layout = "mono"
            for i in range(DEMO_FRAMES):
                expr = torch.from_numpy(fit.faces.expression[:1].copy())
                for name, curve in expressions.items():
                    expr[0, model.expression_index(name)] = float(curve[i])
                # Extra rotation about the head's own centre, composed with the fitted pose.
                extra = axis_angle_to_matrix(torch.as_tensor(extra_rotation[i]).float())
                verts = model.vertices(ident, expr)
                centre = verts[0, model.region("skin")].mean(0)
                verts = (verts - centre) @ extra.T + centre
                cam = fit.camera.to_camera(base_rotation.numpy(), fit.faces.translation[0])
                with torch.no_grad():
                    out = render_mesh(verts, model.triangles, cam, texture_image=texture,
                                      uv_coords=model.uv_coords, uv_triangles=model.uv_triangles,
                                      sh_coeffs=torch.from_numpy(fit.faces.sh[:1]),
                                      background=background)
                frame = (out.image[0].numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
                for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
            _write_tones(container, audio, DEMO_FRAMES / DEMO_FPS)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(lock)
    return path


def _write_tones(container, stream, seconds: float) -> None:
    """A few sine tones (mono, 44.1 kHz) so the demo clip has an audio track to keep."""
    import av

    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    freq = np.where(t < seconds / 3, 440.0, np.where(t < 2 * seconds / 3, 554.37, 659.25))
    signal = (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    frame_size = 1024
    for start in range(0, len(signal), frame_size):
        chunk = signal[start:start + frame_size]
        frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def demo_files(out_dir: Path, real: bool = False) -> tuple[Path, Path, list[Path]]:
    """The demo's source, its target and every file it writes into `out_dir`."""
    from morph3d.cli.fit import export_outputs

    if real:
        media = Path(__file__).resolve().parents[2].parent / "shared" / "media"
        if not media.is_dir():
            raise Morph3dError(f"`make demo-real` needs the real media folder {media}")
        return (media / "mark.jpg", media / "nggyup.mp4",
                [out_dir / name for name in ("demo_real.mp4", "demo_real_preview.png",
                                             "demo_real_summary.json")])
    outputs = [out_dir / name for name in ("demo_target.mp4", "demo.mp4", "demo_preview.png",
                                           "demo_summary.json", "demo.glb")]
    return bundled_source(), out_dir / "demo_target.mp4", [
        *outputs, *export_outputs(out_dir / "demo.obj")]


def check_demo_paths(out_dir: Path, real: bool = False) -> tuple[Path, Path]:
    """Before any work: `out_dir` is a folder or can be created (it is, here), and no file
    the demo writes there is one of its inputs (`morph3d.io.outputs.check_outputs`). Returns
    the source and the target."""
    source, target, outputs = demo_files(out_dir, real)
    check_creatable_dir(out_dir, "demo output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the demo output folder {out_dir}: "
                         f"{exc.strerror}") from None
    # The target clip the demo makes is an output here and an input of its swap only.
    inputs = [source, target] if real else [source, bundled_target_photo()]
    check_outputs(inputs, outputs)
    return source, target


def run_demo(out_dir: Path, real: bool = False, quiet: bool = False) -> dict:
    """Write the demo outputs into out_dir; returns the swap summary as a dict."""
    from morph3d.io.export import export_fit
    from morph3d.model.registry import load_model
    from morph3d.swap.driver import swap, write_summary
    from morph3d.swap.options import SwapOptions

    out_dir = Path(out_dir)
    source, target = check_demo_paths(out_dir, real)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    model = load_model("default")
    if real:
        output, preview = out_dir / "demo_real.mp4", out_dir / "demo_real_preview.png"
    else:
        # Always re-made (a few seconds): a clip left by an older model build or fitting
        # code would swap into a different target (the fits are cached by its content).
        make_target_clip(target, model, log)
        output, preview = out_dir / "demo.mp4", out_dir / "demo_preview.png"
        log("demo: fitting Grace Hopper's photo and exporting the mesh to demo.glb / demo.obj")
        from fitting.photo import fit_photo

        fit = fit_photo(source, model)[0]
        export_fit(fit, model, out_dir / "demo.glb")
        export_fit(fit, model, out_dir / "demo.obj")
    log(f"demo: swapping {source.name} into {target.name}")
    summary = swap([source], target, output, SwapOptions(preview=preview, quiet=quiet))
    write_summary(out_dir / ("demo_real_summary.json" if real else "demo_summary.json"), summary)
    log(f"demo: wrote {output} ({summary.frames} frames, {summary.frames_swapped} swapped) "
        f"and {preview}")
    return summary.to_dict()
