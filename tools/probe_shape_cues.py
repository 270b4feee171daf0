"""Probe: would a photometric refinement of shape and pose beat the landmark fit on the
synthetic faces of `tools/bench_fitting.py`?

    python tools/probe_shape_cues.py [--faces 40] [--steps 100] [--json FILE]

An experiment behind a fitting decision, not a pipeline step. Each synthetic face
(bench_fitting's: identity ~ N(0, I), yaw within +-60 deg, 1.5 px landmark noise) is rendered
grey-skin shaded over a plain background, fitted to its landmarks (`fit_landmarks`, true
focal), then refined by Adam on identity, expression, rotation, translation, SH lighting and a
uniform albedo, minimising the landmark loss and priors of the fit plus a photometric loss
through `render/`, with one of two cues:

- shading: the face-region pixels only (what a real photo offers: its background and hair are
  unknown, so the head's outline cannot be compared);
- silhouette: the whole image against the known background (the head's outline too; only a
  synthetic render offers this).

Reported: median face vertex error after rigid and after similarity alignment (mm) and pose
error (deg), before and after, over the same faces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

PHOTO_WEIGHT = 1.0  # per squared RGB difference summed over pixels, next to the landmark loss
CUES = ("shading", "silhouette")


def axis_angle_matrix(r):
    """Rodrigues' formula on a torch 3-vector (radians)."""
    import torch

    angle = torch.sqrt((r * r).sum() + 1e-12)
    k = r / angle
    zero = torch.zeros((), dtype=r.dtype)
    K = torch.stack([torch.stack([zero, -k[2], k[1]]), torch.stack([k[2], zero, -k[0]]),
                     torch.stack([-k[1], k[0], zero])])
    return torch.eye(3, dtype=r.dtype) + torch.sin(angle) * K + (1 - torch.cos(angle)) * K @ K


def refine(model, image: np.ndarray, ls, identity: np.ndarray, state, camera, cue: str,
           steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identity, expression, rotation) after the photometric refinement."""
    import torch
    from bench_fitting import SYNTHETIC_BACKGROUND

    from fitting import model_arrays as FM
    from fitting import solvers as FS
    from render.camera import Camera
    from render.helpers import render_mesh

    arrays = FM.model_arrays(model)
    triangles = torch.as_tensor(arrays.triangles)
    face = np.zeros(len(arrays.mean), np.float32)
    face[arrays.face_vertices] = 1.0
    face_colour = torch.as_tensor(face)[:, None].expand(-1, 3)
    target = torch.as_tensor(image.astype(np.float32) / 255.0)[None]
    sigma = max(FS.Priors.min_sigma_px, FS.Priors.sigma_fraction * FS.face_scale(ls.points))
    points = torch.tensor(ls.points)
    weights = torch.tensor(ls.weights)
    mean, id_rows, ex_rows = (torch.tensor(a) for a in (ls.mean, ls.identity, ls.expression))
    alpha = torch.tensor(identity, requires_grad=True)
    expression = torch.tensor(state.expression, requires_grad=True)
    rotation = torch.tensor(state.rotation, requires_grad=True)
    translation = torch.tensor(state.translation, requires_grad=True)
    sh = torch.zeros(9, 3, dtype=torch.float64)
    sh[0] = 0.6
    sh.requires_grad_(True)
    albedo = torch.tensor([0.8, 0.6, 0.5], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([{"params": [alpha], "lr": 0.02}, {"params": [expression], "lr": 0.005},
                            {"params": [rotation], "lr": 0.001},
                            {"params": [translation], "lr": 0.3},
                            {"params": [sh, albedo], "lr": 0.01}])
    c = camera
    for _ in range(steps):
        opt.zero_grad()
        R = axis_angle_matrix(rotation)
        cam_pts = (mean + id_rows @ alpha + ex_rows @ expression) @ R.T + translation
        uv = torch.stack([c.fx * cam_pts[:, 0] / cam_pts[:, 2] + c.cx,
                          c.fy * cam_pts[:, 1] / cam_pts[:, 2] + c.cy], 1)
        loss = (weights * ((uv - points) ** 2).sum(1)).sum() / sigma ** 2
        loss = loss + FS.Priors.identity * (alpha ** 2).sum()
        loss = loss + FS.Priors.expression * (expression ** 2).sum()
        verts = model.vertices(alpha[None].float(), expression[None].float())
        view = Camera(c.fx, c.fy, c.cx, c.cy, c.width, c.height, R=R.float(),
                      t=translation.float())
        colours = albedo.float()[None].expand(verts.shape[1], 3)
        if cue == "shading":
            with torch.no_grad():
                mask = render_mesh(verts.detach(), triangles, view, vertex_colors=face_colour,
                                   antialias=False).image[..., :1] > 0.99
            out = render_mesh(verts, triangles, view, vertex_colors=colours,
                              sh_coeffs=sh.float()[None], antialias=False).image
            photo = (((out - target) ** 2).sum(-1, keepdim=True) * mask).sum()
        else:
            out = render_mesh(verts, triangles, view, vertex_colors=colours,
                              sh_coeffs=sh.float()[None], background=SYNTHETIC_BACKGROUND).image
            photo = ((out - target) ** 2).sum()
        loss = loss + PHOTO_WEIGHT * photo.double()
        loss.backward()
        opt.step()
    return (alpha.detach().numpy(), expression.detach().numpy(), rotation.detach().numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch
    from bench_fitting import render_synthetic, rigid_error, sim_error, synthetic_case

    from fitting import model_arrays as FM
    from fitting import photo as FP
    from fitting.synthetic import pose_error_deg
    from morph3d.model.registry import load_model

    torch.set_num_threads(1)
    model = load_model("default")
    face = FM.model_arrays(model).face_vertices
    rng = np.random.default_rng(0)  # the same faces as bench_fitting's synthetic part

    def errors(identity, expression, rotation, alpha, state) -> tuple[float, float, float]:
        fitted = FM.vertex_positions(model, identity, expression)[face]
        true = FM.vertex_positions(model, alpha, state.expression)[face]
        return (rigid_error(fitted, true), sim_error(fitted, true),
                pose_error_deg(rotation, state.rotation))

    rows: dict[str, list] = {"landmarks": [], **{cue: [] for cue in CUES}}
    seconds: dict[str, list] = {cue: [] for cue in CUES}
    for i in range(args.faces):
        alpha, state, camera, lms, _ = synthetic_case(model, rng)
        image = render_synthetic(model, alpha, state, camera)
        ident, states, cams, ls_list = FP.fit_landmarks(model, [lms], [image.shape[:2]],
                                                       focal=camera.fx)
        st = states[0]
        rows["landmarks"].append(errors(ident, st.expression, st.rotation, alpha, state))
        for cue in CUES:
            t0 = time.perf_counter()
            out = refine(model, image, ls_list[0], ident, st, cams[0], cue, args.steps)
            seconds[cue].append(time.perf_counter() - t0)
            rows[cue].append(errors(*out, alpha, state))
        print(f"face {i}: " + ", ".join(f"{k} {v[-1][0]:.2f} / {v[-1][1]:.2f} mm "
                                        f"{v[-1][2]:.2f} deg" for k, v in rows.items()),
              flush=True)
    result = {"faces": args.faces, "steps": args.steps, "photo_weight": PHOTO_WEIGHT}
    for key, values in rows.items():
        r = np.array(values)
        result[key] = {"median_vertex_mm": float(np.median(r[:, 0])),
                       "median_vertex_mm_similarity_aligned": float(np.median(r[:, 1])),
                       "median_pose_err_deg": float(np.median(r[:, 2])),
                       **({"median_refine_s": float(np.median(seconds[key]))}
                          if key in seconds else {})}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
