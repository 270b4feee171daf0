"""Render a grid of the head model: the mean, +-2 sigma identities and a few expressions.

Usage: python tools/render_model_grid.py [--model default] [-o docs/model_grid.png]

Rows: (1) the mean and +2 sigma along the first identity components, (2) -2 sigma along
the same components, (3) expressions on the mean (jawOpen, smile, blink, brows, pucker,
tongue), (4) random identities drawn from the prior N(0, I), turned 30 degrees.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from morph3d.builders.parts import vertex_parts
from morph3d.builders.preview import render_preview, rotation_yaw_pitch
from morph3d.io.images import write_image
from morph3d.model.registry import load_model

SKIN = np.array([0.85, 0.70, 0.60])
EXPRESSIONS = (("jawOpen", 1.0), ("mouthSmileLeft", 1.0), ("mouthSmileRight", 1.0),
               ("eyeBlinkLeft", 1.0), ("browInnerUp", 1.0), ("mouthPucker", 1.0),
               ("tongueOut", 1.0))


def colors_for(model) -> np.ndarray:
    parts = vertex_parts(model.data)
    c = np.tile(SKIN, (model.num_vertices, 1))
    c[model.region("lips")] = [0.70, 0.38, 0.38]
    c[model.region("mouth_interior")] = [0.3, 0.1, 0.1]
    c[model.region("teeth")] = [0.95, 0.95, 0.9]
    c[model.region("tongue")] = [0.75, 0.35, 0.35]
    c[np.isin(parts, (4, 5))] = [0.92, 0.92, 0.92]
    return c


def tile(model, vertices: torch.Tensor, label: str, yaw: float = 0.0, size: int = 256):
    img = render_preview(vertices.detach().numpy(), model.data.triangles, colors_for(model),
                         size=size, rotation=rotation_yaw_pitch(yaw, 0.0),
                         centre=np.array([0.0, -20.0, 0.0]), extent_mm=300.0).image.copy()
    cv2.putText(img, label, (6, size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1,
                cv2.LINE_AA)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("-o", "--output", default="docs/model_grid.png")
    args = parser.parse_args()
    model = load_model(args.model)
    k, cols = model.num_identity, 7
    eye = torch.eye(k)
    rows = [[tile(model, model.vertices()[0], "mean")]
            + [tile(model, model.vertices(2 * eye[i:i + 1])[0], f"id{i} +2sd")
               for i in range(cols - 1)],
            [tile(model, model.vertices()[0], "mean, 30 deg", yaw=0.5)]
            + [tile(model, model.vertices(-2 * eye[i:i + 1])[0], f"id{i} -2sd")
               for i in range(cols - 1)]]
    expr_row = []
    for name, w in EXPRESSIONS:
        e = torch.zeros(1, model.num_expression)
        e[0, model.expression_index(name)] = w
        expr_row.append(tile(model, model.vertices(expression=e)[0], name))
    rows.append(expr_row)
    gen = torch.Generator().manual_seed(7)
    rand = model.vertices(torch.randn(cols, k, generator=gen))
    rows.append([tile(model, rand[i], f"random {i}", yaw=0.5) for i in range(cols)])
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(out, grid)
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
