"""The transfer's kept actor pixels over the forehead: a fringe of hair kept whole, bare
forehead skin swapped (`morph3d.swap.transfer.actor_non_skin`)."""

from __future__ import annotations

import numpy as np
from test_transfer import crop_face


def fringe_crop(strands: bool, size: int = 256):
    """`crop_face` with a fringe over the forehead (from the crop's top to just above the
    brows): thin dark strands every 6 px joined by a hair cap, and between them light hair
    a little off the skin's colour (strand by strand under the hysteresis's 3 sigmas), or,
    `strands` False, bare forehead skin with a few dark freckles."""
    from morph3d.composite.occluders import fit_skin_model, non_skin_score

    points, seen, regions = crop_face(size)
    model = fit_skin_model(seen, {"ibug68": points})
    top = int(points[17:27, 1].min()) - 8  # rows above the brows
    x0, x1 = int(points[17:27, 0].min()), int(points[17:27, 0].max())
    skin = np.float32([0.85, 0.62, 0.52])
    light = skin + 0.4 * (np.float32([0.78, 0.65, 0.58]) - skin)
    hair = np.zeros((size, size), bool)
    if strands:
        hair[:top, x0:x1] = True
        seen[:top, x0:x1] = light
        for x in range(x0, x1, 6):
            seen[:top, x:x + 2] = (0.35, 0.33, 0.32)
        seen[:12, x0:x1] = (0.35, 0.33, 0.32)  # the cap the strands hang from
    else:
        rng = np.random.default_rng(2)
        for x, y in zip(rng.integers(x0, x1, 12), rng.integers(10, top, 12), strict=True):
            seen[y:y + 2, x:x + 2] = (0.35, 0.33, 0.32)
    gap = non_skin_score(light[None, None], model)[0, 0]
    return points, seen, regions, model, hair, top, (x0, x1), gap


def test_a_fringe_of_thin_strands_is_kept_whole_not_only_its_strands() -> None:
    """The light hair between a fringe's dark strands, each pixel only a little off the skin,
    is kept with the strands: kept strand by strand, the skin-toned gaps between them would
    take the source's skin and speckle the fringe."""
    from morph3d.swap.transfer import actor_non_skin

    size = 256
    points, seen, regions, model, hair, top, (x0, x1), gap = fringe_crop(True, size)
    assert 1.5 < gap < 3.0  # the gaps are not non-skin pixel by pixel
    iod = float(np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0)))
    keep = actor_non_skin(seen, np.ones((size, size), bool), model, regions, points,
                          (0.0, 0.0, float(size)), size, iod)
    fringe = np.zeros((size, size), bool)
    fringe[12:top - 4, x0 + 4:x1 - 4] = True  # inside the fringe, off its edges
    assert keep[fringe].mean() > 0.95
    assert not keep[top + 2:, x0:x1].any()  # the brows and the face below stay skin


def test_a_bare_forehead_with_freckles_is_not_kept() -> None:
    """Freckles on a bare forehead are islands: the fringe test does not join them into a
    fringe, and the forehead skin between them takes the source's skin."""
    from morph3d.swap.transfer import actor_non_skin

    size = 256
    points, seen, regions, model, _, top, (x0, x1), _ = fringe_crop(False, size)
    iod = float(np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0)))
    keep = actor_non_skin(seen, np.ones((size, size), bool), model, regions, points,
                          (0.0, 0.0, float(size)), size, iod)
    assert keep[:top, x0:x1].mean() < 0.02


def light_fringe_crop(hanging: bool, size: int = 256):
    """`crop_face` with a patch of light hair over the forehead, every pixel a little off
    the skin's colour and none clearly off it (blond or light brown hair near the skin's
    hue): from the crop's top down to just above the brows (`hanging`), or the same patch
    as an island in the forehead's skin, clear of the top."""
    from morph3d.composite.occluders import fit_skin_model, non_skin_score

    points, seen, regions = crop_face(size)
    model = fit_skin_model(seen, {"ibug68": points})
    top = int(points[17:27, 1].min()) - 8
    x0, x1 = int(points[17:27, 0].min()), int(points[17:27, 0].max())
    skin = np.float32([0.85, 0.62, 0.52])
    light = skin + 0.4 * (np.float32([0.78, 0.65, 0.58]) - skin)
    first = 0 if hanging else top // 2
    seen[first:top, x0:x1] = light
    gap = non_skin_score(light[None, None], model)[0, 0]
    return points, seen, regions, model, (first, top), (x0, x1), gap


def test_a_light_fringe_hanging_from_the_scalp_is_kept_without_a_clear_strand() -> None:
    """A fringe whose hair is near the skin's colour everywhere has no clearly non-skin
    pixel for the fringe test to join; it reaches the head's outline above the forehead
    (here the crop's top), and is kept whole: otherwise the ratio paints it as skin, a pale
    band under the hair with a jagged edge."""
    from morph3d.swap.transfer import actor_non_skin

    size = 256
    points, seen, regions, model, (first, top), (x0, x1), gap = light_fringe_crop(True, size)
    assert 1.5 < gap < 3.0  # off the skin, but nowhere clearly
    iod = float(np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0)))
    keep = actor_non_skin(seen, np.ones((size, size), bool), model, regions, points,
                          (0.0, 0.0, float(size)), size, iod)
    assert keep[first + 2:top - 4, x0 + 4:x1 - 4].mean() > 0.95
    assert not keep[top + 2:, x0:x1].any()  # the brows and the face below stay skin


def test_a_light_patch_in_the_forehead_is_not_kept() -> None:
    """The same light patch as an island in the forehead (a paler or pinker area of skin)
    reaches no outline and stays skin."""
    from morph3d.swap.transfer import actor_non_skin

    size = 256
    points, seen, regions, model, (first, top), (x0, x1), _ = light_fringe_crop(False, size)
    iod = float(np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0)))
    keep = actor_non_skin(seen, np.ones((size, size), bool), model, regions, points,
                          (0.0, 0.0, float(size)), size, iod)
    assert keep[first:top, x0:x1].mean() < 0.02
