"""Classical completion of a UV texture extracted from photos (no learned prior).

A texture unprojected from one photo only has the texels the camera saw; the rest (the far
cheek of a turned head, under the chin, behind the ears) must be filled before the texture
is rendered in other poses. `complete_uv_texture` does it in three classical steps:

1. Mirror: a face is nearly left/right symmetric, and in our UV atlas the skin is laid out
   symmetric around u = 0.5 (`morph3d.builders.head.head_uv_layout`, skin rows v in
   [0.14, 1]), so an unseen texel takes its mirror texel's colour when that one was seen.
2. Inpaint what neither side saw: a confidence-weighted pull-push (multi-scale normalised
   averaging over a Gaussian pyramid; smooth and fast) or OpenCV's Telea inpainting, run
   per UV region so skin never bleeds into the eye or teeth tiles.
3. Feather the seam: the confidence is softened just inside the visible boundary, so the
   photo's texels fade into the filled ones over a few texels instead of a hard step.

The learned completion (`morph3d.neural.completion`, used by the swap when its weights load)
starts from this result and corrects the colours of the texels the photo did not see.

Textures follow the renderer's convention: row 0 is v = 1, texel (i, j) centred at
u = (j + 0.5) / W, v = 1 - (i + 0.5) / H.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from morph3d.errors import InputError

SKIN_V_RANGE = (0.14, 1.0)  # same as morph3d.builders.head.SKIN_V_RANGE

MirrorSpec = np.ndarray | Callable[[np.ndarray], np.ndarray] | None


def skin_rows(height: int, v_range: tuple[float, float] = SKIN_V_RANGE) -> np.ndarray:
    """(H,) bool: texel rows whose centre v lies in `v_range`."""
    v = 1.0 - (np.arange(height) + 0.5) / height
    return (v >= v_range[0]) & (v <= v_range[1])


def atlas_mirror_index(shape: tuple[int, int], v_range: tuple[float, float] = SKIN_V_RANGE
                       ) -> np.ndarray:
    """(H, W) int64: flat index of each texel's mirror (u -> 1 - u, same v) for texels in
    the skin rows of our atlas, -1 for the rest (the tile strip has no mirror)."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    index = rows * w + (w - 1 - cols)
    index[~skin_rows(h, v_range)] = -1
    return index.astype(np.int64)


def default_uv_regions(shape: tuple[int, int], v_range: tuple[float, float] = SKIN_V_RANGE
                       ) -> dict[str, np.ndarray]:
    """The atlas split into the skin square and the strip of part tiles below it."""
    h, w = shape
    skin = np.repeat(skin_rows(h, v_range)[:, None], w, axis=1)
    return {"skin": skin, "parts": ~skin}


@dataclass
class CompletedTexture:
    """texture: H x W x C float32; confidence: after mirroring (what the photo(s) gave,
    directly or mirrored); source: H x W uint8, 0 = seen, 1 = mirrored, 2 = inpainted,
    3 = outside every region (left as it was); fractions of the regions' texels by source."""

    texture: np.ndarray
    confidence: np.ndarray
    source: np.ndarray
    seen_fraction: float
    mirrored_fraction: float
    inpainted_fraction: float


def _label_map(shape: tuple[int, int], regions: Mapping[str, np.ndarray] | np.ndarray | None
               ) -> np.ndarray:
    """int32 H x W: 0 outside every region, else 1 + the region's index (later ones win)."""
    if regions is None:
        regions = default_uv_regions(shape)
    if isinstance(regions, np.ndarray):
        if regions.shape != shape:
            raise InputError(f"UV region labels are {regions.shape}, expected {shape}")
        return regions.astype(np.int32)
    labels = np.zeros(shape, np.int32)
    for k, mask in enumerate(regions.values()):
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise InputError(f"UV region mask is {mask.shape}, expected {shape}")
        labels[mask > 0.5] = k + 1
    return labels


def _mirror(values: np.ndarray, mirror: MirrorSpec, index: np.ndarray | None) -> np.ndarray:
    if index is not None:
        flat = values.reshape(-1, *values.shape[2:])
        return flat[np.maximum(index, 0)].reshape(values.shape)
    assert callable(mirror)
    out = np.asarray(mirror(values))
    if out.shape != values.shape:
        raise InputError(f"mirror function returned {out.shape} for {values.shape}")
    return out


def pull_push(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fill an image where `weights` (H x W, >= 0) are low from where they are high.

    Pull: a Gaussian pyramid (cv2.pyrDown) of the weights and of the weighted colours, so
    each coarser level holds weighted averages and the fraction of valid texels under them.
    Push: from the top down, each level mixes its own average and the upsampled coarser
    level by that fraction; at the finest level this is ``w * value + (1 - w) * fill`` for
    weights in [0, 1]. Mixing by the fraction (not by "any valid texel", as in the
    original pull-push) keeps the fill smooth instead of smearing the hole's edge inwards.
    """
    values = np.asarray(values, np.float32)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[..., None]
    weights = np.clip(np.asarray(weights, np.float32), 0.0, None)
    channels = values.shape[2]
    if not (weights > 0).any():
        out = np.zeros_like(values)
        return out[..., 0] if squeeze else out
    sums = [values * weights[..., None]]
    ws = [weights]
    while min(ws[-1].shape) > 1:
        w = cv2.pyrDown(ws[-1])
        sums.append(cv2.pyrDown(sums[-1]).reshape(*w.shape, channels))
        ws.append(w)
    filled = sums[-1] / np.maximum(ws[-1], 1e-12)[..., None]
    empty = ws[-1] <= 1e-12
    if empty.any():  # nothing valid under a top texel: use the global weighted mean
        filled[empty] = sums[0].reshape(-1, channels).sum(0) / float(weights.sum())
    for level in range(len(ws) - 2, -1, -1):
        s, w = sums[level], ws[level]
        h, wd = w.shape
        up = cv2.resize(filled, (wd, h), interpolation=cv2.INTER_LINEAR).reshape(h, wd, -1)
        a = np.clip(w, 0.0, 1.0)[..., None]
        filled = s / np.maximum(w, 1e-12)[..., None] * a + up * (1.0 - a)
    return filled[..., 0] if squeeze else filled


def complete_uv_texture(texture: np.ndarray, confidence: np.ndarray, *,
                        mirror: MirrorSpec = None,
                        regions: Mapping[str, np.ndarray] | np.ndarray | None = None,
                        seam_px: float | None = None,
                        method: Literal["pull_push", "telea"] = "pull_push",
                        seen_threshold: float = 0.5) -> CompletedTexture:
    """Fill the texels of a UV texture that the photo did not see (see the module docstring).

    texture: H x W x C float (colours in [0, 1]); confidence: H x W in [0, 1] (1 = seen
    well, 0 = not seen; the unprojection's visibility/foreshortening weight).
    mirror: None (our atlas: u -> 1 - u inside the skin rows, `atlas_mirror_index`), an
    (H, W) int array of flat mirror indices (-1 = none), or a function mapping an
    H x W x ... array to its mirror image (e.g. ``np.fliplr``).
    regions: UV region masks ({name: H x W bool}) or an int label map; texels are only
    mirrored and inpainted from their own region. Default: skin square / part strip.
    seam_px: sigma of the seam feather in texels (default max(1, W / 128)).
    """
    texture = np.asarray(texture, np.float32)
    squeeze = texture.ndim == 2
    if squeeze:
        texture = texture[..., None]
    shape = texture.shape[:2]
    confidence = np.clip(np.asarray(confidence, np.float32), 0.0, 1.0)
    if confidence.shape != shape:
        raise InputError(f"confidence is {confidence.shape}, texture is {shape}")
    if method not in ("pull_push", "telea"):
        raise ValueError(f"method must be 'pull_push' or 'telea', got {method!r}")
    labels = _label_map(shape, regions)
    seam_px = max(1.0, shape[1] / 128.0) if seam_px is None else seam_px

    # 3 (first): soften the confidence just inside the seen area's boundary.
    conf = confidence
    if seam_px > 0:
        blurred = cv2.GaussianBlur(confidence, (0, 0), seam_px)
        # lower only: texels deep inside the seen area (blur ~ 1) keep their confidence
        conf = np.where(blurred >= 0.999, confidence, np.minimum(confidence, blurred))
    conf = conf * (labels > 0)

    # 1. mirror
    index = None
    if mirror is None:
        index = atlas_mirror_index(shape)
    elif not callable(mirror):
        index = np.asarray(mirror, np.int64)
        if index.shape != shape:
            raise InputError(f"mirror index is {index.shape}, expected {shape}")
    mirrored_tex = _mirror(texture, mirror, index)
    mirrored_conf = _mirror(conf[..., None], mirror, index)[..., 0]
    same_region = _mirror(labels[..., None], mirror, index)[..., 0] == labels
    if index is not None:
        same_region &= index >= 0
    mirror_weight = (1.0 - conf) * mirrored_conf * same_region
    weight = conf + mirror_weight  # <= 1
    combined = (texture * conf[..., None] + mirrored_tex * mirror_weight[..., None]) / \
        np.maximum(weight, 1e-12)[..., None]

    # 2. inpaint the rest, region by region
    out = texture.copy()
    for label in np.unique(labels):
        if label == 0:
            continue
        inside = labels == label
        w = weight * inside
        if method == "pull_push":
            filled = pull_push(combined, w)
        else:
            filled = _telea_fill(combined, w, inside, seen_threshold)
            filled = combined * w[..., None] + filled * (1.0 - w[..., None])
        out[inside] = filled[inside]

    source = np.full(shape, 3, np.uint8)
    in_regions = labels > 0
    source[in_regions] = 2
    source[in_regions & (mirror_weight >= seen_threshold)] = 1
    source[in_regions & (confidence >= seen_threshold)] = 0
    n = max(int(in_regions.sum()), 1)
    result = CompletedTexture(
        texture=out[..., 0] if squeeze else out,
        confidence=weight.astype(np.float32),
        source=source,
        seen_fraction=float((source == 0).sum() / n),
        mirrored_fraction=float((source == 1).sum() / n),
        inpainted_fraction=float((source == 2).sum() / n),
    )
    return result


def _telea_fill(values: np.ndarray, weight: np.ndarray, inside: np.ndarray,
                threshold: float) -> np.ndarray:
    """cv2.inpaint (Telea) of one region's low-weight texels, per channel in 16 bits (8 bits
    would band a smooth skin gradient, and OpenCV 5's float32 path returns garbage on [0, 1]
    data). Texels of other regions are marked as holes too, so they are never used as
    sources; only the region's bounding box is processed."""
    out = values.copy()
    ys, xs = np.nonzero(inside)
    if len(ys) == 0:
        return out
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    hole = (((weight[box] < threshold) & inside[box]) | ~inside[box]).astype(np.uint8)
    if hole.all():
        return out
    radius = max(3.0, values.shape[1] / 64.0)
    for c in range(values.shape[2]):
        channel = np.round(np.clip(values[box][..., c], 0.0, 1.0) * 65535.0).astype(np.uint16)
        filled = cv2.inpaint(channel, hole, radius, cv2.INPAINT_TELEA)
        out[box][..., c] = filled.astype(np.float32) / 65535.0
    return out
