"""What the identity transfer prepares once per job (`prepare_transfer`): both sides' albedos
in the same convention, and the source's shape at the actor's size and place.

- The actor's albedo in UV (`actor_albedo`): a dozen frames spread over the clip, each
  divided by its fitted SH shading over the clip's light level (`clip_light_level`),
  merged robustly per texel (`merge_albedos`), so the ratio `transfer_face` applies is the
  same in every frame.
- The source's albedo: the source fit's UV texture times `source_albedo_factor`, which puts
  it under the same kind of shading model the clip's frames are divided by; what on the
  photo is not its skin (highlights, occluders' colours, glasses) does not vote
  (`source_skin_vote`), and skin coloured far off its median by light (a shadowed fold's
  red) is brought nearer it (`tempered_chroma`).
- The two pictures' exposures: half their ratio (`scene_levels`: the photo's, the clip's
  median) is taken off the source's albedo, so a photo's brightness does not pass into the
  clip as the skin's; into a black-and-white clip the source's albedo goes in grey, and a
  black-and-white photo's albedo takes the actor's colours (`with_actor_colour`).
- Both sides' albedos under 1 (`headroom_gain`): the transfer reads them as colours and
  would cut a light skin's albedo there; one gain on both keeps their ratio.
- `identity_alignment`: the similarity that puts the source's neutral face on the actor's.

Units as in `morph3d.swap.transfer`: pixels, colours float32 RGB in [0, 1], model space mm.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numba
import numpy as np

from morph3d.composite.colour import LUMA, linear_to_srgb, srgb_to_linear
from morph3d.swap.tone import normalized_blur
from morph3d.swap.transfer import actor_non_skin, eye_openness


def clip_light_level(model, clip_fit, samples: int = 40) -> np.ndarray:
    """(3,) the clip's typical light level: the median over up to `samples` frames of the
    mean SH shading (the clip fit's per-frame SH, which include the light's level) over
    the face skin facing the camera (`facing_mean`)."""
    import torch

    f = clip_fit.faces
    frames = np.flatnonzero(np.asarray(f.valid, bool))
    if not len(frames):
        return np.ones(3, np.float32)
    from render.ops import sh_shading

    skin = model.region("face_skin")
    levels = []
    for i in frames[np.linspace(0, len(frames) - 1, min(samples, len(frames))).astype(int)]:
        normals = lighting_normals(model, clip_fit.identity.coefficients, f.expression[i],
                                   f.rotation[i], clip_fit.camera)
        shade = sh_shading(normals[None], torch.from_numpy(
            np.asarray(f.sh[i], np.float32))[None])[0]
        levels.append(facing_mean(shade, normals, skin).numpy())
    return np.median(levels, 0).astype(np.float32)


def identity_alignment(model, source_identity: np.ndarray, actor_identity: np.ndarray
                       ) -> np.ndarray:
    """3 x 4 similarity (s R | t, model space mm) that puts the source's neutral face onto
    the actor's (Umeyama on the 68 landmarks in 3D).

    Two fits fix a face's size, its place relative to the model's origin and its tilt only
    up to what the pictures show: a photo fit of one frame of a clip comes out about a
    fifth larger than the clip's fit of the same person and sits about 0.1 IOD higher on
    the head. Those differences are not identity, and a warp by them would move the
    actor's whole face; the swap transfers the source's shape at the actor's size, place
    and tilt."""
    import torch

    ident = torch.from_numpy(np.stack([source_identity, actor_identity]).astype(np.float32))
    points = model.landmarks(model.vertices(ident), "ibug68").numpy().astype(np.float64)
    src, dst = points[0], points[1]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    cov = (src - mu_s).T @ (dst - mu_d) / len(src)
    u, singular, vt = np.linalg.svd(cov)
    d = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = (u @ np.diag(d) @ vt).T  # column-vector form: x' = s R x + t
    scale = (singular * d).sum() / ((src - mu_s) ** 2).sum(1).mean()
    return np.concatenate([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]], 1)


def lighting_normals(model, identity: np.ndarray, expression: np.ndarray, rotation,
                     camera_params):
    """V x 3 torch unit vertex normals of a posed mesh in the SH lighting frame."""
    import torch

    from render.ops import vertex_normals

    verts = model.vertices(torch.from_numpy(np.asarray(identity, np.float32)[None]),
                           torch.from_numpy(np.asarray(expression, np.float32)[None]))
    cam = camera_params.to_camera(rotation, np.zeros(3, np.float32))
    normals = vertex_normals(verts, model.triangles)[0]
    return torch.einsum("ij,vj->vi", cam.R.to(normals), normals) * torch.tensor(
        [1.0, -1.0, -1.0])


def source_albedo_factor(model, source_fit, photo: np.ndarray, max_side: int = 2000,
                         seen: np.ndarray | None = None) -> np.ndarray:
    """V x 3 per-vertex factor that turns the source fit's UV albedo into the photo's
    colours divided by the same kind of shading the clip's frames are divided by.

    The source albedo was divided by the photo fit's SH shading (a photometric fit); the
    clip's per-frame SH come from `fitting.video.ShSampler` (a regularised linear solve
    with albedo 1), whose directional terms can differ wildly from the photo fit's for the
    same picture. A ratio of albedos made under two shading models carries their
    disagreement, so the source side is re-divided: albedo x photo-fit shading (= the
    photo's colour) / the sampler's shading pattern of the photo, normalised by its mean
    over the face skin facing the camera that the photo saw at all (`seen`: V bool, from
    the texels' confidence; None: all of it). The sampler's SH are solved from the seen
    side only and can be far off on a turned head's far side: a mean over it would set the
    source's whole albedo lighter or darker than the photo shows the skin."""
    import torch

    from fitting.params import CameraParams
    from fitting.pose import FrameState
    from fitting.video import ShSampler
    from render.ops import sh_shading

    f = source_fit.faces
    state = FrameState(f.rotation[0].astype(np.float64), f.translation[0].astype(np.float64),
                       f.expression[0].astype(np.float64))
    coefficients = source_fit.identity.coefficients.astype(np.float64)
    camera = source_fit.camera
    h, w = photo.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:  # the sampler reads 400 points: a large photo is read scaled down
        small = cv2.resize(photo, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        sy, sx = small.shape[0] / h, small.shape[1] / w
        camera = CameraParams(camera.fx * sx, camera.fy * sy, (camera.cx + 0.5) * sx - 0.5,
                              (camera.cy + 0.5) * sy - 0.5, small.shape[1], small.shape[0])
        photo = small
    sampled = ShSampler.for_model(model).estimate(photo, model, coefficients, state, camera)
    dc = np.where(np.abs(sampled[0]) > 1e-3, sampled[0], 1.0)
    normals = lighting_normals(model, coefficients, f.expression[0], f.rotation[0],
                               source_fit.camera)
    fitted = sh_shading(normals[None], torch.from_numpy(
        np.asarray(f.sh[0], np.float32))[None])[0]
    pattern = sh_shading(normals[None], torch.from_numpy(
        (sampled / dc).astype(np.float32))[None])[0]
    skin = model.region("face_skin")
    if seen is not None and int((skin & seen).sum()) >= 10:
        skin = skin & seen
    pattern = pattern / facing_mean(pattern, normals, skin)
    factor = (fitted.clamp_min(0.05) / pattern.clamp_min(0.05)).numpy().astype(np.float32)
    # near grazing angles either shading is a guess: keep the factor near its typical value
    typical = np.median(factor[skin], 0)
    return np.clip(factor, typical / 2, typical * 2).astype(np.float32)


def vertex_texels(model, image: np.ndarray, count: int) -> np.ndarray:
    """count x C: a UV image (T x T x C, the renderer's convention: row 0 is v = 1) read at
    each of the model's `count` vertices' UV coordinate (bilinear; a vertex on a UV seam
    takes one of its UV copies)."""
    size_v, size_u = image.shape[:2]
    uv = np.zeros((count, 2), np.float32)
    uv[model.triangles.numpy().ravel()] = model.uv_coords.numpy()[
        model.uv_triangles.numpy().ravel()]
    cols = (uv[:, 0] * size_u - 0.5).astype(np.float32)[None]
    rows = ((1.0 - uv[:, 1]) * size_v - 0.5).astype(np.float32)[None]
    out = cv2.remap(np.asarray(image, np.float32), cols, rows, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)[0]
    return out.reshape(len(uv), -1)


def mirror_seen_side(model, texture: np.ndarray, confidence: np.ndarray, factor: np.ndarray,
                     share: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source albedo where the photo did not see it taken from the mirror of where it
    did: (T x T x 3 texture, T x T confidence, V x 3 factor).

    A photo of a turned head sees one half of the face; the other half's texels have low
    confidence and would leave the ratio to a coarse or overall tone there, a band down
    the nose where the seen half ends. A face is nearly symmetric, so an unseen texel takes
    its mirror texel's colour (`complete_uv_texture`'s mirror step: the atlas's skin is
    laid out symmetric around u = 0.5) and votes with `share` times the confidence the
    mirror added, below a texel truly seen. The per-vertex `source_albedo_factor` (V x 3)
    is mirrored the same way (`model.data.mirror`, weighted by each vertex's texel
    confidence), so a mirrored texel keeps the factor of the surface it was seen on."""
    from morph3d.neural.texture_completion import complete_uv_texture

    conf = np.clip(np.asarray(confidence, np.float32).reshape(*texture.shape[:2], -1)[..., 0],
                   0.0, 1.0)
    done = complete_uv_texture(texture, conf)
    added = np.clip(done.confidence - conf, 0.0, 1.0)
    # the mirror's colour only where it added confidence; elsewhere the texture (and the
    # completion's fill where nothing was seen, which keeps no vote) stays as it was
    mixed = np.where(added[..., None] > 0, done.texture, texture)
    out_conf = (conf + share * added).astype(np.float32)
    factor = np.asarray(factor, np.float32)
    mirror = model.data.mirror
    if mirror is None:
        return mixed.astype(np.float32), out_conf, factor
    own = np.clip(vertex_texels(model, conf[..., None], len(factor))[:, 0], 0.0, 1.0)
    twin = (1.0 - own) * own[mirror]
    total = own + twin
    mirrored = (factor * own[:, None] + factor[mirror] * twin[:, None]) / np.maximum(
        total, 1e-6)[:, None]
    factor = np.where(total[:, None] > 1e-6, mirrored, factor).astype(np.float32)
    return mixed.astype(np.float32), out_conf, factor


# Per-model UV rasters: they depend only on the model's mesh and the raster's size, and
# drawing them is a Python loop over the triangles; kept while the model's data lives.
_UV_CACHE: dict[int, dict] = {}


def _cached(model, key: tuple, make):
    data = model.data
    if id(data) not in _UV_CACHE:  # dropped with the data (its id may then be reused)
        _UV_CACHE[id(data)] = {}
        weakref.finalize(data, _UV_CACHE.pop, id(data), None)
    per_model = _UV_CACHE[id(data)]
    if key not in per_model:
        per_model[key] = make()
    return per_model[key]


def uv_triangle_ids(model, size: int) -> np.ndarray:
    """T x T int32 (T = `size`, the renderer's UV convention: row 0 is v = 1): the model
    triangle each texel lies in (the last drawn where two share an edge), -1 where none.
    Cached per model and size; read-only."""
    def make() -> np.ndarray:
        uv = np.asarray(model.data.uv_coords)
        uv_triangles = np.asarray(model.data.uv_triangles)
        canvas = np.full((size, size), -1, np.int32)
        for t, corners in enumerate(uv[uv_triangles] * [size, -size] + [0, size]):
            cv2.fillConvexPoly(canvas, np.round(corners * 16).astype(np.int32), t,
                               lineType=cv2.LINE_8, shift=4)
        canvas.flags.writeable = False
        return canvas

    return _cached(model, ("triangle_ids", size), make)


def uv_triangle_values(model, values: np.ndarray, size: int) -> np.ndarray:
    """T x T x C: per-vertex `values` (V x C) on the UV raster, each texel the mean over its
    triangle's three vertices (1 where no triangle lies)."""
    ids = uv_triangle_ids(model, size)
    per_triangle = np.asarray(values, np.float32)[np.asarray(model.data.triangles)].mean(1)
    return np.where((ids >= 0)[..., None], per_triangle[np.maximum(ids, 0)], 1.0
                    ).astype(np.float32)


def uv_vertex_mask(model, vertices: np.ndarray, size: int) -> np.ndarray:
    """T x T bool (T = `size`, the renderer's UV convention: row 0 is v = 1): the texels of
    the model triangles whose vertices are all in `vertices` (V bool)."""
    triangles = np.asarray(model.data.triangles)
    uv_triangles = np.asarray(model.data.uv_triangles)
    uv = np.asarray(model.data.uv_coords)
    canvas = np.zeros((size, size), np.uint8)
    for t in np.flatnonzero(np.asarray(vertices, bool)[triangles].all(1)):
        corners = uv[uv_triangles[t]] * [size, -size] + [0, size]  # texel x, row
        cv2.fillConvexPoly(canvas, np.round(corners * 16).astype(np.int32), 1,
                           lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def face_skin_texels(model, size: int) -> np.ndarray:
    """T x T bool: the face skin's texels less the lips (`uv_vertex_mask`), cached per model
    and size; read-only."""
    def make() -> np.ndarray:
        mask = uv_vertex_mask(model, model.region("face_skin") & ~model.region("lips"), size)
        mask.flags.writeable = False
        return mask

    return _cached(model, ("face_skin_texels", size), make)


def uv_positions(model, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(T x T x 3 mean-face position in mm, T x T bool: a triangle covers the texel) on the
    renderer's UV raster (T = `size`, row 0 is v = 1), each triangle's texels at its
    centroid: the places where a face feature sits on any texture, to a triangle's size."""
    data = model.data
    ids = uv_triangle_ids(model, size)
    centres = np.asarray(data.mean)[np.asarray(data.triangles)].mean(1).astype(np.float32)
    covered = ids >= 0
    return np.where(covered[..., None], centres[np.maximum(ids, 0)], 0.0), covered


class EyeRings(NamedTuple):
    """Where glasses would sit on the UV raster (T x T each, from `uv_positions`).

    radius: each texel's elliptical distance from the nearer eye's centre on the mean face,
    1 on a typical lens's rim (`LENS`); angle: its direction there (radians, 0 away from
    the nose, pi / 2 up); side: -1 or 1, which eye; radial: T x T x 2 unit texel-space
    direction (x, row) in which the radius grows; band: where frames and lenses lie (radius
    up to `BAND_RADIUS` and the nose bridge between the eyes; the lids are behind the
    lenses)."""

    radius: np.ndarray
    angle: np.ndarray
    side: np.ndarray
    radial: np.ndarray
    band: np.ndarray


# The scale of a lens round the eye: half a width and half a height in eyes' distances
# (IOD). Lenses are 0.65 to 0.9 IOD wide and 0.45 to 0.8 high, the eye in their upper half:
# their rims lie from about 0.55 to 1.6 of this from the eye's centre (small and large
# lenses); the glasses' band (frames and lenses) reaches to `BAND_RADIUS`.
LENS = (0.4, 0.33)
FRAME_RADII = (0.55, 1.6)
BAND_RADIUS = 1.75


def eye_rings(model, size: int) -> EyeRings:
    """The `EyeRings` of the model's UV raster at T = `size` (cached per model and size)."""
    return _cached(model, ("eye_rings", size), lambda: _eye_rings(model, size))


def _eye_rings(model, size: int) -> EyeRings:
    data = model.data
    mean, triangles = np.asarray(data.mean), np.asarray(data.triangles)
    ibug = data.landmarks["ibug68"].positions(mean, triangles)
    left, right = ibug[36:42].mean(0), ibug[42:48].mean(0)
    iod = float(np.linalg.norm(right - left))
    pos, covered = uv_positions(model, size)
    # smoothed over the texels (each triangle's are at its centroid) for the radial direction
    weight = cv2.GaussianBlur(covered.astype(np.float32), (0, 0), 2.0)
    smooth = cv2.GaussianBlur(pos * covered[..., None], (0, 0), 2.0) / np.maximum(
        weight, 1e-6)[..., None]
    centre_x, centre_y = 0.5 * float(abs(right[0] - left[0])), 0.5 * float(left[1] + right[1])

    def polar(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = (np.abs(p[..., 0]) - centre_x) / (LENS[0] * iod)
        dy = (p[..., 1] - centre_y) / (LENS[1] * iod)
        return np.sqrt(dx ** 2 + dy ** 2), np.arctan2(dy, dx)

    radius, angle = polar(pos)
    grown = np.stack(np.gradient(polar(smooth)[0])[::-1], -1)  # d/dx (column), d/drow
    radial = grown / np.maximum(np.linalg.norm(grown, axis=-1, keepdims=True), 1e-6)
    bridge = ((np.abs(pos[..., 0]) < centre_x)
              & (np.abs(pos[..., 1] - centre_y) < 0.2 * iod))
    band = ((radius <= BAND_RADIUS) | bridge) & covered
    side = np.where(pos[..., 0] < 0, -1, 1).astype(np.int8)
    return EyeRings(radius.astype(np.float32), angle.astype(np.float32), side,
                    radial.astype(np.float32), band)


def line_strength(channels: np.ndarray, scales: tuple[float, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """How strongly each texel lies on a thin line (a ridge or a valley) in any of
    `channels` (C x T x T, each in units of its own spread on skin), the largest over
    `scales` (Gaussian sigmas, texels): the scale-normalised Hessian's larger eigenvalue
    magnitude less the smaller one, so a line scores its contrast and a blob or a smooth
    slope (shading) scores little. Returns (T x T strength, T x T x 2 unit direction
    across the line, (x, row))."""
    best = np.zeros(channels.shape[1:], np.float32)
    across = np.zeros((*channels.shape[1:], 2), np.float32)
    for sigma in scales:
        for channel in channels:
            g = cv2.GaussianBlur(np.asarray(channel, np.float32), (0, 0), sigma)
            dxx = cv2.Sobel(g, cv2.CV_32F, 2, 0, ksize=3)
            dyy = cv2.Sobel(g, cv2.CV_32F, 0, 2, ksize=3)
            dxy = cv2.Sobel(g, cv2.CV_32F, 1, 1, ksize=3) * 0.25
            half = 0.5 * (dxx + dyy)
            root = np.sqrt(np.maximum(half ** 2 - (dxx * dyy - dxy ** 2), 0.0))
            big = np.where(half >= 0, half + root, half - root)  # the larger in magnitude
            # |big| - |other|: a line's contrast; 0 on a blob (equal) and a saddle (opposite)
            strength = sigma ** 2 * 2.0 * np.minimum(np.abs(half), root)
            # its eigenvector: (dxy, big - dxx), or (big - dyy, dxy) where that is larger
            a = np.stack([dxy, big - dxx], -1)
            b = np.stack([big - dyy, dxy], -1)
            vec = np.where((np.abs(a).sum(-1) >= np.abs(b).sum(-1))[..., None], a, b)
            vec = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-9)
            better = strength > best
            best = np.where(better, strength, best)
            across = np.where(better[..., None], vec, across)
    return best, across


def glasses_cover(rings: EyeRings, strength: np.ndarray, across: np.ndarray,
                  usable: np.ndarray, line_sigmas: float, bins: int = 24,
                  share: float = 0.05) -> float:
    """The share (0-1) of the directions around the eyes in which a frame's line runs
    round the eye: per eye, `bins` sectors of the frame's annulus (`FRAME_RADII`), less
    the upper third (the brows: lines there are the face's own), each counted when more
    than `share` of its `usable` texels lie on a line stronger than `line_sigmas` that runs
    along the ring (across it: radial). Sectors with too few usable texels (what the photo
    did not see) are not counted either way; 0 when fewer than a quarter are left.

    Glasses close a ring round each eye; bare skin's lines there do not: folds under the
    eye run along it on one side, crow's feet and a nose's side run across it."""
    ring = usable & (rings.radius >= FRAME_RADII[0]) & (rings.radius <= FRAME_RADII[1])
    along = ring & (strength > line_sigmas) & (
        np.abs((across * rings.radial).sum(-1)) > 0.7)
    sector = np.floor((rings.angle + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    centre = (np.arange(bins) + 0.5) * 2 * np.pi / bins - np.pi
    upper = (centre > np.pi / 6) & (centre < 5 * np.pi / 6)
    counted = found = 0
    for side in (-1, 1):
        mine = rings.side == side
        total = np.bincount(sector[ring & mine], minlength=bins)
        hits = np.bincount(sector[along & mine], minlength=bins)
        keep = ~upper & (total >= 10)
        counted += int(keep.sum())
        found += int((keep & (hits > share * total)).sum())
    lower = 2 * int((~upper).sum())
    return found / counted if counted >= lower / 4 else 0.0


# a bare forehead's albedo differs from the cheeks' by up to about this share of their
# lightness: the floor of the spread the fringe's darkness is measured in, for a photo whose
# cheeks are smoother than that (retouched, or rendered)
FOREHEAD_SPREAD = 0.1


def source_skin_vote(model, texture: np.ndarray, confidence: np.ndarray,
                     sigmas: float = 6.0, light_sigmas: float = 3.0, brow_mm: float = 9.0,
                     line_sigmas: float = 1.5, line_mm: tuple[float, ...] = (1.2, 2.5),
                     glasses_share: float = 0.35, fringe_sigmas: float = 1.5,
                     fringe_mm: float = 3.0, fringe_low_mm: float = 3.0) -> np.ndarray:
    """T x T weight in [0, 1]: how far each texel of the photo's albedo may vote as skin.

    What the photo shows on the face that is not its skin (a specular highlight the
    diffuse shading did not divide out, hair, glasses, a dark frame or strap) would be
    carried onto the actor as streaks and rings; those texels do not vote, and the ratio
    there comes from the skin around them, as on the photo's unseen side.

    The skin's colour is modelled on the cheek texels the photo saw
    (`composite.skin_model_from_samples`); a texel is not skin when its colour is more than
    `sigmas` off it (`non_skin_score`: chroma, and dark things), or when it is lighter
    than the cheeks by more than `light_sigmas` of their luma spread: the albedo has the
    photo's shading divided out, so its skin is nowhere much lighter than the cheeks but
    where a highlight was left in it. Each test fades in from half its threshold.

    Glasses are found by their shape, not their colour (a tortoise-shell frame has the
    skin's hue): a frame closes a ring of thin lines round each eye (`line_strength` over
    `line_mm` scales, in mm on the mean face, stronger than `line_sigmas` of the skin's
    spread in luma or chroma, running round the eye: `glasses_cover`). Where it does in
    more than `glasses_share` of the directions, the band of the glasses (`EyeRings.band`:
    frames, and the skin and lids behind the lenses, which the glass lightens, tints and
    reflects on) does not vote, and the cheeks' skin model is fitted below the lenses; the
    brows there, along which a frame's top often runs, vote as any skin does (by the colour
    tests: a dark frame, or brows as dark as it, do not), not as a feature. Bare
    skin's lines there (folds under the eye, crow's feet) run round the eye on one side at
    most and keep their vote.

    Above the brows (more than `fringe_low_mm` above their line, the brows' band included)
    a fringe of hair near the skin's colour (blond, light brown) is off the skin by only a
    few sigmas strand by strand, and so is the shadow it casts: what is darker than the
    cheeks by more than `fringe_sigmas` of their luma spread (at least `FOREHEAD_SPREAD` of
    their luma), low-passed at `fringe_mm` (a strand's spacing), does not vote either. The
    albedo has the photo's shading divided out: a bare forehead is about as light as the
    cheeks.

    Otherwise the brows (within `brow_mm` of their line on the mean face) and the lips are
    features, not occluders, and always vote."""
    from morph3d.composite.occluders import non_skin_score, skin_model_from_samples, ycrcb

    size = texture.shape[0]
    conf = np.clip(np.asarray(confidence, np.float32).reshape(size, size, -1)[..., 0], 0, 1)
    data = model.data
    mean, triangles = np.asarray(data.mean), np.asarray(data.triangles)
    ibug = data.landmarks["ibug68"].positions(mean, triangles)
    lips = model.region("lips")
    skin = model.region("face_skin") & ~lips
    eyes_low = float(ibug[[40, 41, 46, 47], 1].min())
    nose_half = 0.5 * float(abs(ibug[35, 0] - ibug[31, 0]))
    outer = 0.5 * float(abs(ibug[45, 0] - ibug[36, 0]))
    cheeks = (skin & ~model.region("eyes") & (mean[:, 1] < eyes_low - 4.0)
              & (mean[:, 1] > ibug[33, 1]) & (np.abs(mean[:, 0]) > nose_half + 4.0)
              & (np.abs(mean[:, 0]) < outer))
    tex = np.clip(np.asarray(texture, np.float32), 0.0, 1.0)
    ycc = ycrcb(tex)
    seen = conf >= 0.5
    cheeks = uv_vertex_mask(model, cheeks, size) & seen
    skin_model = skin_model_from_samples(ycc[cheeks])
    if skin_model is None:
        return np.ones((size, size), np.float32)
    # features: the brows' band (distance of each vertex to the brow polylines) and lips
    brows = np.zeros(len(mean), bool)
    for line in (ibug[17:22], ibug[22:27]):
        for a, b in zip(line[:-1], line[1:], strict=True):
            ab = b - a
            t = np.clip(((mean - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
            brows |= np.linalg.norm(mean - (a + t[:, None] * ab), axis=1) < brow_mm
    features = uv_vertex_mask(model, lips | brows, size)
    # glasses: lines in luma or in chroma (each whitened by the skin's own spread)
    whiten = np.linalg.cholesky(skin_model.chroma_cov_inv).astype(np.float32)
    channels = np.concatenate([
        ((ycc[..., 0] - skin_model.mean[0]) / max(skin_model.std_y, 1e-6))[None],
        np.moveaxis((ycc[..., 1:] - skin_model.mean[1:].astype(np.float32)) @ whiten, -1, 0)])
    texels_per_mm = _texels_per_mm(model, size)
    strength, across = line_strength(channels, tuple(s * texels_per_mm for s in line_mm))
    rings = eye_rings(model, size)
    glasses = glasses_cover(rings, strength, across, seen & ~features,
                            line_sigmas) > glasses_share
    if glasses:  # the lenses reach the upper cheeks: the skin is what lies below them
        below = skin_model_from_samples(ycc[cheeks & ~rings.band])
        skin_model = skin_model if below is None else below
    score = non_skin_score(tex, skin_model, dark_sigmas=2.5, ycc=ycc)
    light = (ycc[..., 0] - skin_model.mean[0]) / max(skin_model.std_y, 1e-6)
    off = np.maximum(np.clip((score - sigmas / 2) / (sigmas / 2), 0.0, 1.0),
                     np.clip((light - light_sigmas / 2) / (light_sigmas / 2), 0.0, 1.0))
    # a fringe's hair, however near the skin's colour, and the shadow it casts are darker
    # than the cheeks' skin over a strand's spacing; bare forehead skin is not
    above = uv_vertex_mask(model, above_brows(mean, ibug, fringe_low_mm), size) & seen
    spread = max(skin_model.std_y, FOREHEAD_SPREAD * float(skin_model.mean[0]))
    # low-passed over the forehead alone: the brows and what the photo did not see beside it
    # do not pull its edge
    shade = -normalized_blur(np.minimum(ycc[..., 0] - skin_model.mean[0], 0.0) / spread,
                             above.astype(np.float32), fringe_mm * texels_per_mm)[0]
    fringe = np.clip((shade - fringe_sigmas / 2) / (fringe_sigmas / 2), 0.0, 1.0) * above
    if glasses:  # a frame's top runs along the brows: there only the colour tests hold
        brow_band = uv_vertex_mask(model, brows, size) & rings.band
        off = np.maximum(off, (rings.band & ~brow_band).astype(np.float32))
        features = features & ~rings.band
    vote = 1.0 - off
    vote[features] = 1.0
    vote = np.minimum(vote, 1.0 - fringe)
    return vote.astype(np.float32)


def above_brows(mean: np.ndarray, ibug: np.ndarray, margin: float) -> np.ndarray:
    """V bool: the mean face's vertices higher than the brows' line (the 68 points 17-26,
    mm, y up; linear between them, level beyond their ends) plus `margin` mm: the forehead
    and the temples, where a fringe hangs."""
    brows = ibug[17:27]
    order = np.argsort(brows[:, 0])
    line = np.interp(mean[:, 0], brows[order, 0], brows[order, 1])
    return mean[:, 1] > line + margin


def _texels_per_mm(model, size: int) -> float:
    """The UV raster's typical scale on the mean face: texels (T = `size`) per mm, the
    median over the triangles' edges."""
    data = model.data
    mean, triangles = np.asarray(data.mean), np.asarray(data.triangles)
    uv, uv_triangles = np.asarray(data.uv_coords), np.asarray(data.uv_triangles)
    along = np.linalg.norm(uv[uv_triangles[:, 0]] - uv[uv_triangles[:, 1]], axis=1) * size
    edge = np.linalg.norm(mean[triangles[:, 0]] - mean[triangles[:, 1]], axis=1)
    keep = edge > 1e-6
    return float(np.median(along[keep] / edge[keep]))


def headroom_gain(model, source: np.ndarray, source_confidence: np.ndarray,
                  factor: np.ndarray, actor: np.ndarray, actor_confidence: np.ndarray,
                  ceiling: float = 0.95, quantile: float = 99.0) -> float:
    """The gain (<= 1) on both sides' sRGB-encoded albedos that keeps their face skin under
    `ceiling`: `quantile` % of the face-skin vertices either side trusts (confidence over
    1/2) have every channel under it.

    An albedo is its picture's colour over a shading normalised to 1 on average, so the
    light skin of a well-exposed photo is above 1 wherever the face is less lit than its
    average, and the source's side (texture (`source`) x `factor`, the exposure gain in it)
    above that again. The transfer reads both sides as colours in [0, 1]: every channel
    over 1 would be cut to 1 there, the ratio's red flattened over half the face and all
    three at the lit parts (pale patches, a cast against the neck). One gain on both sides'
    encoded values keeps their linear ratio (within the sRGB curve's linear toe, a few
    thousandths on skin) and what the ratio carries: only its ratio enters the frame."""
    count = model.num_vertices
    skin = np.asarray(model.region("face_skin"), bool)
    peaks = []
    for albedo, confidence, scale in ((source, source_confidence, factor),
                                      (actor, actor_confidence, None)):
        texels = vertex_texels(model, np.concatenate(
            [albedo, np.asarray(confidence, np.float32).reshape(*albedo.shape[:2], 1)], -1),
            count)
        keep = skin & (texels[:, 3] > 0.5)
        if int(keep.sum()) < 10:
            continue
        colour = texels[keep, :3] * (1.0 if scale is None else np.asarray(scale)[keep])
        peaks.append(float(np.percentile(colour.max(1), quantile)))
    peak = max(peaks, default=0.0)
    return min(1.0, ceiling / peak) if peak > 0 else 1.0


def facing_mean(shading, normals, skin: np.ndarray, min_facing: float = 0.3):
    """Per-channel mean (torch, 3) of per-vertex `shading` over the face-skin vertices
    (`skin`, V bool) that face the camera (lighting-frame normal z >= `min_facing`).

    Shading patterns are normalised by this, not by their SH ambient term: with strong
    directional terms the ambient term is far from what the visible face receives, and
    the albedos' ratio would carry that. Normalised so, an albedo's mean over the visible
    face is the picture's mean skin colour."""
    import torch

    keep = torch.from_numpy(np.asarray(skin, bool)) & (normals[:, 2] >= min_facing)
    if int(keep.sum()) < 10:
        return torch.ones(3)
    return shading[keep].mean(0).clamp_min(0.05)


class SceneLevels(NamedTuple):
    """How a picture (or a clip: the median over frames) is exposed and how colourful it is.

    exposure: the mean linear luma (0-1) less black bars (pixels with every channel at or
    under 4 of 255: letterboxing, a frame's border), what a camera's auto-exposure holds
    near middle grey; twice the linear light reads twice as high, and what the scene holds
    (a white wall, a dark room) moves it too. colour: the mean spread between a pixel's
    largest and smallest channel, in 8-bit levels (0 for a black-and-white picture)."""

    exposure: float
    colour: float


# Under this colour spread (8-bit levels) a picture is black and white: a colour picture's
# mean spread is tens of levels, a monochrome one decoded from YUV is exactly 0.
MONOCHROME_LEVELS = 1.5


def scene_levels(rgb: np.ndarray) -> SceneLevels:
    """The `SceneLevels` of a uint8 RGB picture (zeros for an all-black one)."""
    pixels = np.ascontiguousarray(np.asarray(rgb, np.uint8).reshape(-1, 3))
    # per channel: each 8-bit level's linear light, weighted by the channel's luma share
    table = (srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)[:, None]
             * LUMA[None, :]).astype(np.float64)
    count, luma, spread = _lit_sums(pixels, table)
    if not count:
        return SceneLevels(0.0, 0.0)
    return SceneLevels(luma / count, spread / count)


@numba.njit(cache=True, nogil=True)
def _lit_sums(pixels: np.ndarray, table: np.ndarray) -> tuple[int, float, float]:
    """Over the pixels (N x 3 uint8) whose largest channel is over 4: their count, the sum
    of their linear luma (`table`: 256 x 3 per level and channel) and of their largest
    minus smallest channel, in one pass."""
    count, luma, spread = 0, 0.0, 0.0
    for i in range(pixels.shape[0]):
        r, g, b = pixels[i, 0], pixels[i, 1], pixels[i, 2]
        top = max(r, g, b)
        if top > 4:
            count += 1
            luma += table[r, 0] + table[g, 1] + table[b, 2]
            spread += top - min(r, g, b)
    return count, luma, spread


# The frames of one shot differ in scene level by up to about this factor as things move
# through them (hands raised, a head turning, clothes): within it, no exposure difference is
# read between two pictures.
EXPOSURE_TOLERANCE = 1.25


def exposure_gain(photo: float, clip: float, share: float) -> float:
    """The gain on the source's albedo for two exposure levels (`SceneLevels.exposure`):
    `share` (an exponent) of their ratio clip / photo beyond `EXPOSURE_TOLERANCE` either
    way; 1 within it."""
    excess = np.log(clip / photo)
    excess = np.sign(excess) * max(abs(excess) - np.log(EXPOSURE_TOLERANCE), 0.0)
    return float(np.exp(share * excess))


def with_actor_colour(model, texture: np.ndarray, actor: np.ndarray,
                      actor_confidence: np.ndarray) -> np.ndarray:
    """A grey source albedo (T x T x 3, sRGB-encoded, equal channels) given the actor's
    albedo's colour (T x T x 3 sRGB-encoded, its confidence T x T) at the same lightness.

    A black-and-white photo says how light each part of the face is, not its colour:
    taken as grey, the ratio would paint the actor's lips, cheeks and the clip's tint
    over with one flat skin colour. Each texel keeps its lightness and takes the actor's
    chromaticity there (linear RGB over luma), or the actor's median skin chromaticity
    where the clip did not see it, so the transfer changes lightness only."""
    size = texture.shape[0]
    actor_linear = srgb_to_linear(np.asarray(actor, np.float32))
    chroma = actor_linear / np.maximum(actor_linear @ LUMA, 1e-4)[..., None]
    conf = np.clip(np.asarray(actor_confidence, np.float32).reshape(size, size), 0.0, 1.0)
    skin = face_skin_texels(model, size)
    seen = skin & (conf >= 0.5)
    typical = (np.median(chroma[seen], 0) if seen.sum() >= 20 else np.ones(3, np.float32))
    chroma = conf[..., None] * chroma + (1.0 - conf[..., None]) * typical
    grey = srgb_to_linear(np.asarray(texture, np.float32)) @ LUMA
    return linear_to_srgb(np.clip(grey[..., None] * chroma, 0.0, 1.0)).astype(np.float32)


# How far (log R/G, log B/G) the photo's skin colour may stray from its median before its
# stray is compressed, and the slope beyond: the spread of a face's own colour (cheeks, nose,
# the beard's shadow) stays, the excess is mostly light.
CHROMA_SPREAD = 0.2
CHROMA_SLOPE = 0.3


def tempered_chroma(model, texture: np.ndarray, confidence: np.ndarray, factor: np.ndarray,
                    spread: float = CHROMA_SPREAD, slope: float = CHROMA_SLOPE) -> np.ndarray:
    """The source texture (T x T x 3, sRGB-encoded; its albedo is texture x the per-vertex
    `factor`) with each face-skin texel's chromaticity kept within about `spread` of the
    skin's median: beyond it the distance grows at `slope` only; lightness is kept.

    A photo's skin colour strays far from its median where light, not skin, coloured it:
    the red of light through the skin in a shadowed fold or under the nose, a coloured wall's
    bounce on the shadow side. The shading model divides out lightness, not that colour, so
    the ratio would paint it on the actor as a saturated patch (red-orange beside the mouth)."""
    size = texture.shape[0]
    scale = uv_triangle_values(model, factor, size)
    linear = srgb_to_linear(np.clip(np.asarray(texture, np.float32) * scale, 0.0, 1.0))
    conf = np.clip(np.asarray(confidence, np.float32).reshape(size, size, -1)[..., 0], 0, 1)
    skin = face_skin_texels(model, size)
    if (skin & (conf >= 0.5)).sum() < 20:
        return texture
    logs = np.log(np.maximum(linear, 1e-4))
    chroma = np.stack([logs[..., 0] - logs[..., 1], logs[..., 2] - logs[..., 1]], -1)
    stray = chroma - np.median(chroma[skin & (conf >= 0.5)], 0)
    far = np.linalg.norm(stray, axis=-1, keepdims=True)
    kept = np.where(far > spread, stray * (spread + (far - spread) * slope)
                    / np.maximum(far, 1e-6), stray)
    moved = np.where(skin[..., None], kept - stray, 0.0)
    gains = np.exp(np.stack([moved[..., 0], np.zeros(moved.shape[:2]), moved[..., 1]], -1))
    moved_linear = linear * gains
    moved_linear *= ((linear @ LUMA) / np.maximum(moved_linear @ LUMA, 1e-6))[..., None]
    tempered = linear_to_srgb(np.clip(moved_linear, 0.0, 1.0)) / np.maximum(scale, 1e-4)
    return np.where(skin[..., None], tempered, texture).astype(np.float32)


def colourless(texture: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A source albedo (T x T x 3 texture, V x 3 per-vertex factor) made grey: each texel and
    each vertex's factor replaced by its luma-weighted mean, the same in every channel."""
    grey = (np.asarray(texture, np.float32) @ LUMA)[..., None]
    scale = (np.asarray(factor, np.float32) @ LUMA)[:, None]
    return (np.repeat(grey, 3, -1).astype(np.float32),
            np.repeat(scale, 3, -1).astype(np.float32))


def albedo_frames(clip_fit, count: int) -> np.ndarray:
    """Up to `count` frame indices spread evenly over the clip fit's frames that have a
    face (valid, not faceless, landmarks finite)."""
    f = clip_fit.faces
    usable = np.asarray(f.valid, bool).copy()
    faceless = np.asarray(clip_fit.faceless, int)
    usable[faceless[faceless < len(usable)]] = False
    for points in clip_fit.landmarks.values():
        n = min(len(usable), len(points))
        usable[:n] &= np.isfinite(np.asarray(points[:n], np.float64)).all(axis=(1, 2))
    candidates = np.flatnonzero(usable)
    if len(candidates) <= count:
        return candidates
    return np.unique(candidates[np.round(np.linspace(0, len(candidates) - 1, count))
                                .astype(int)])


def frame_albedo_texture(model, clip_fit, index: int, frame: np.ndarray,
                         light_reference: np.ndarray, region_channels, texels: int = 256,
                         size: int = 256, backend: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """One frame's view of the actor's albedo in UV: (T x T x 3 sRGB-encoded albedo, T x T
    confidence in [0, 1], T = `texels`).

    The frame (uint8 RGB) is read on a `size`-pixel square crop around the face and divided
    by the clip fit's SH shading of the frame over the clip's light level `light_reference`
    (`clip_light_level`), the convention the source's side uses (`source_albedo_factor`).
    Confidence: the surface's facing (cos to the camera, `render.helpers.unproject_to_uv`),
    0 where the frame shows no skin there (a fringe, a microphone: `actor_non_skin`)."""
    import torch

    from morph3d.composite.masks import face_geometry
    from morph3d.composite.occluders import fit_skin_model
    from morph3d.swap.window import REGION_CHANNELS, crop_camera, face_crop_box
    from render.backends import rasterize
    from render.helpers import extract_texture
    from render.ops import interpolate, sh_shading

    f = clip_fit.faces
    identity = np.asarray(clip_fit.identity.coefficients, np.float32)
    verts = model.vertices(torch.from_numpy(identity[None]), torch.from_numpy(
        np.asarray(f.expression[index], np.float32)[None]))
    cam = clip_fit.camera.to_camera(f.rotation[index], f.translation[index])
    lm68 = cam.project(model.landmarks(verts, "ibug68"))[0].numpy()
    lm478 = cam.project(model.landmarks(verts, "mediapipe478"))[0].numpy()
    box = face_crop_box(lm478, frame.shape[:2])
    crop_cam = crop_camera(cam, box, size)
    x0, y0, side = box
    centres = (np.arange(size, dtype=np.float32) + 0.5) * (side / size) - 0.5
    grid = np.stack(np.meshgrid(centres + x0, centres + y0), -1).astype(np.float32)
    if side > 1.5 * size:  # a large face is low-passed first: the remap below point-samples
        blur = 0.5 * side / size
        frame = cv2.GaussianBlur(frame, (0, 0), blur)
    seen = cv2.remap(frame, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT).astype(np.float32) / 255.0
    normals = lighting_normals(model, identity, f.expression[index], f.rotation[index],
                               clip_fit.camera)
    shade = sh_shading(normals[None], torch.from_numpy(np.asarray(f.sh[index], np.float32))[None])
    shade = shade[0] / torch.from_numpy(np.asarray(light_reference, np.float32))
    tris = model.triangles
    raster = rasterize(crop_cam.to_clip(verts), tris, (size, size), backend=backend)
    attrs = interpolate(torch.cat([shade, region_channels.to(shade)], 1), raster)[0].numpy()
    covered = raster.coverage[0].numpy()
    regions = {n: attrs[..., 3 + i] for i, n in enumerate(REGION_CHANNELS)}
    crop_lm68 = (lm68 - [x0, y0] + 0.5) * (size / side) - 0.5
    crop_iod = face_geometry({"ibug68": crop_lm68}).iod
    skin_model = fit_skin_model(seen, {"ibug68": crop_lm68})
    non_skin = actor_non_skin(seen, covered, skin_model, regions, lm68, box, size, crop_iod)
    albedo = seen / np.maximum(attrs[..., :3], 0.05)
    image = np.concatenate([albedo, (covered & ~non_skin)[..., None]], -1).astype(np.float32)
    texture, confidence = extract_texture(
        torch.from_numpy(image)[None], verts, tris, model.uv_coords, model.uv_triangles,
        crop_cam, texels)
    tex = texture[0].numpy()
    # a texel near a non-skin pixel is partly it (bilinear): only clear skin votes
    weight = np.clip((tex[..., 3] - 0.5) * 2.0, 0.0, 1.0)
    return tex[..., :3].astype(np.float32), (confidence[0, ..., 0].numpy() * weight
                                             ).astype(np.float32)


def merge_albedos(textures: np.ndarray, confidences: np.ndarray, keep: float = 0.15
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-texel robust merge of N views of one albedo: (T x T x 3, T x T confidence).

    textures N x T x T x 3, confidences N x T x T. Per texel, the confidence-weighted
    median lightness over the views; the views whose lightness lies within `keep` (log
    ratio) of it are averaged by confidence, the others (an occluder, a highlight, a cast
    shadow in one frame) are left out. The merged confidence is the largest kept one."""
    textures = np.asarray(textures, np.float32)
    weights = np.asarray(confidences, np.float32)
    luma = np.log(np.maximum(textures @ np.float32([0.299, 0.587, 0.114]), 1e-4))
    order = np.argsort(luma, 0)
    sorted_luma = np.take_along_axis(luma, order, 0)
    sorted_w = np.take_along_axis(weights, order, 0)
    cumulative = np.cumsum(sorted_w, 0)
    half = 0.5 * cumulative[-1]
    pick = np.minimum((cumulative < half[None]).sum(0), len(textures) - 1)
    median = np.take_along_axis(sorted_luma, pick[None], 0)[0]
    kept = weights * (np.abs(luma - median[None]) <= keep)
    total = kept.sum(0)
    merged = (textures * kept[..., None]).sum(0) / np.maximum(total, 1e-6)[..., None]
    fallback = (textures * weights[..., None]).sum(0) / np.maximum(
        weights.sum(0), 1e-6)[..., None]
    merged = np.where(total[..., None] > 1e-6, merged, fallback)
    return merged.astype(np.float32), kept.max(0).astype(np.float32)


def actor_albedo(model, clip_fit, target, light_reference: np.ndarray, region_channels,
                 frames: int = 12, texels: int = 256, quiet: bool = True,
                 backend: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray, SceneLevels]:
    """The actor's albedo in UV, once per clip: (T x T x 3 sRGB-encoded, T x T confidence,
    the clip's `SceneLevels`: the median of the frames read; zeros when none),
    T = `texels`: the transfer reads it only above a tenth of the eyes' distance or so (finer
    detail is each frame's own: `with_frame_detail`), which this many texels resolve.

    Up to `frames` frames spread over the clip (`albedo_frames`) are decoded from `target`
    one at a time (a seek to each: a decode from the keyframe before it, so a long clip
    costs no more than a short one), each turned into its view of the albedo
    (`frame_albedo_texture`) and dropped; the views are merged by `merge_albedos`. One
    albedo for the whole clip: a ratio against it is the same in every frame, where each
    frame's own (its pixels over its fitted shading) would carry that frame's shading-model
    errors into the ratio and flicker."""
    from tqdm import tqdm

    from morph3d.io.media import iter_frames

    chosen = albedo_frames(clip_fit, frames)
    blank = (np.full((texels, texels, 3), 0.5, np.float32),
             np.zeros((texels, texels), np.float32), SceneLevels(0.0, 0.0))
    if not len(chosen):
        return blank
    textures, confidences, levels = [], [], []
    stream, position = None, -1
    with tqdm(total=len(chosen), desc="actor albedo", unit="frame", disable=quiet) as bar:
        for index in chosen:
            if stream is None or index - position > 8:  # further than a few frames: seek
                stream = iter(iter_frames(target, int(index)))
            frame = None
            for frame in stream:
                position = frame.index
                if frame.index >= index:
                    break
            bar.update(1)
            if frame is None or frame.index != index:  # a skipped (corrupt) frame
                stream = None
                continue
            levels.append(scene_levels(frame.rgb))
            texture, confidence = frame_albedo_texture(model, clip_fit, int(index), frame.rgb,
                                                       light_reference, region_channels,
                                                       texels, backend=backend)
            textures.append(texture)
            confidences.append(confidence)
    if not textures:
        return blank
    lit = [level for level in levels if level.exposure > 0]
    clip = (SceneLevels(float(np.median([level.exposure for level in lit])),
                        float(np.median([level.colour for level in lit])))
            if lit else SceneLevels(0.0, 0.0))
    return (*merge_albedos(np.stack(textures), np.stack(confidences)), clip)


@dataclass
class TransferSetup:
    """What `transfer_face` needs that is the same for every frame of a job.

    actor_identity: the clip fit's identity coefficients; textures: T x T x 8 torch tensor
    (source albedo RGB, its confidence: 0 where the photo did not see; the actor's albedo
    RGB, its confidence: `actor_albedo`); source_factor: V x 3 torch tensor
    (`source_albedo_factor`); alignment: 3 x 4 (`identity_alignment`); eye_openness: (2,)
    the actor's usual opening of each eye (`usual_eye_openness`)."""

    actor_identity: np.ndarray
    textures: object
    source_factor: object
    alignment: np.ndarray
    eye_openness: np.ndarray | None = None


def prepare_transfer(model, source_fit, clip_fit, photo: np.ndarray, target,
                     region_channels, albedo_frames: int = 12, quiet: bool = True,
                     backend: str | None = None, mirror_share: float = 0.5,
                     source_skin: bool = True, exposure_share: float = 0.5) -> TransferSetup:
    """The per-job constants of the transfer: `photo` is the (first) source photo, uint8
    RGB, the one `source_fit`'s first frame was fitted to; `target` the clip `clip_fit`
    was fitted to (`albedo_frames` of its frames give the actor's albedo, `actor_albedo`;
    `quiet`: no progress bar). A source fit without a texture counts as unseen everywhere
    (the ratio is then one: only the shape is transferred). `mirror_share`: the vote of a
    texel the photo did not see, taken from its seen mirror (`mirror_seen_side`; 0: none).

    Both albedos keep their picture's brightness, so their ratio holds the two pictures'
    exposures as well as the two skins: a photo lit for a portrait against a dim clip would
    give a face that glows in the clip, brighter than the actor's neck and ears. The ratio
    of the two pictures' exposure levels (`scene_levels`: the photo's, the clip's median),
    beyond what one shot's frames differ by (`exposure_gain`), is divided out of the
    source's albedo to the power `exposure_share`: half, because that
    level also follows what the scene holds (a dark stage or a white wall), as the skins'
    own lightness ratio follows the exposure; each measure alone is off by about as much.
    A black-and-white clip shows no skin colour: the source's albedo goes in grey
    (`colourless`), so the ratio changes lightness only and the face stays grey."""
    import torch

    identity = source_fit.identity
    if identity.texture is None or identity.confidence is None:
        size = int(model.data.texture_size)
        texture = np.full((size, size, 3), 0.5, np.float32)
        confidence = np.zeros((size, size, 1), np.float32)
    else:
        texture = np.asarray(identity.texture, np.float32)
        confidence = np.asarray(identity.confidence, np.float32).reshape(
            *texture.shape[:2], -1)[..., :1]
    actor, actor_confidence, clip = actor_albedo(model, clip_fit, target,
                                           clip_light_level(model, clip_fit), region_channels,
                                           frames=albedo_frames, quiet=quiet,
                                           backend=backend)
    if actor.shape[:2] != texture.shape[:2]:  # one lookup reads both: one texel grid
        actor = cv2.resize(actor, texture.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        actor_confidence = cv2.resize(actor_confidence, texture.shape[1::-1],
                                      interpolation=cv2.INTER_LINEAR)
    if source_skin:
        confidence = confidence * source_skin_vote(model, texture, confidence)[..., None]
    seen = vertex_texels(model, confidence, model.num_vertices)[:, 0] > 0.05
    factor = source_albedo_factor(model, source_fit, photo, seen=seen)
    photo_levels = scene_levels(photo)
    if exposure_share > 0 and clip.exposure > 0 and photo_levels.exposure > 0:
        factor = factor * np.float32(exposure_gain(photo_levels.exposure, clip.exposure,
                                                   exposure_share))
    grey_clip = clip.exposure > 0 and clip.colour < MONOCHROME_LEVELS
    if grey_clip:
        texture, factor = colourless(texture, factor)
    if mirror_share > 0:
        texture, seen, factor = mirror_seen_side(model, texture, confidence, factor,
                                                 mirror_share)
        confidence = seen[..., None]
    if photo_levels.exposure > 0 and photo_levels.colour < MONOCHROME_LEVELS and not grey_clip:
        texture, factor = colourless(texture, factor)
        texture = with_actor_colour(model, texture, actor, actor_confidence)
    elif not grey_clip:
        texture = tempered_chroma(model, texture, confidence, factor)
    # one gain on both sides: their ratio stays, no channel of either is cut at 1
    gain = np.float32(headroom_gain(model, texture, confidence, factor, actor,
                                    actor_confidence))
    factor, actor = factor * gain, actor * gain
    textures = torch.from_numpy(np.concatenate(
        [texture, confidence, actor, actor_confidence[..., None]], -1).astype(np.float32))
    return TransferSetup(
        actor_identity=np.asarray(clip_fit.identity.coefficients, np.float32),
        textures=textures,
        source_factor=torch.from_numpy(factor),
        alignment=identity_alignment(model, source_fit.identity.coefficients,
                                     clip_fit.identity.coefficients),
        eye_openness=usual_eye_openness(clip_fit))


def usual_eye_openness(clip_fit) -> np.ndarray | None:
    """(2,) the median `transfer.eye_openness` of each eye over the clip's frames with
    mediapipe's points: the lids' state the actor's albedo, merged from frames spread over
    the clip, mostly holds. None without such frames."""
    points = clip_fit.landmarks.get("mediapipe478")
    if points is None or not len(points):
        return None
    points = np.asarray(points, np.float64)
    found = np.isfinite(points).all(axis=(1, 2))
    if not found.any():
        return None
    return np.median(eye_openness(points[found]), axis=0).astype(np.float32)
