"""The frame's sharpness on the source's side of the tone ratio (morph3d.swap.sharpness): the
blur estimate from a picture's own edges, the match, and the transfer on a blurred frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from morph3d.swap.sharpness import (
    blur_to_match,
    edge_blur,
    edge_weight,
    gaussian_kernel,
    match_blur,
    soft_cut,
)


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """`test_transfer.device_inputs` turns autograd off as the swap driver does; the next
    test file (the renderer's gradient checks) must find it as it was."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


def shapes(size: int = 256, seed: int = 0) -> np.ndarray:
    """Disks and lines of random contrast on grey: edges of every direction (H x W x 3)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 0.5, np.float32)
    for _ in range(40):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, centre, int(rng.integers(5, 40)), float(rng.uniform(0.1, 0.9)), -1)
    for _ in range(20):
        p = [int(v) for v in rng.integers(0, size, 4)]
        cv2.line(img, p[:2], p[2:], float(rng.uniform(0.1, 0.9)), int(rng.integers(1, 4)))
    return np.repeat(img[..., None], 3, -1)


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img.copy()


def test_the_frames_own_blur_grows_with_its_blur_whatever_its_contrast() -> None:
    img = shapes()
    estimates = [edge_blur(blurred(img, s)) for s in (2.0, 3.0, 4.0, 6.0)]
    assert estimates[0] < estimates[1] < estimates[2] < estimates[3]
    # a faint picture (dark brows against faint ones) reads as blurred as a strong one
    faint = 0.5 + 0.15 * (blurred(img, 3.0) - 0.5)
    assert edge_blur(faint) == pytest.approx(estimates[1], abs=0.05)


def grainy(img: np.ndarray, level: float, seed: int) -> np.ndarray:
    """`img` with Gaussian grain of `level` grey levels, rounded to 8 bits and through a
    JPEG at quality 70 (a video frame's noise and compression), float in [0, 1]."""
    rng = np.random.default_rng(seed)
    noisy = img + rng.normal(0.0, level / 255.0, img.shape).astype(np.float32)
    ok, data = cv2.imencode(".jpg", np.clip(noisy * 255 + 0.5, 0, 255).astype(np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, 70])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0, 4.0])
def test_the_blur_to_match_is_recovered_on_a_grainy_compressed_frame(sigma: float) -> None:
    """The frame is the source blurred by `sigma` px, with grain and JPEG blocks: the grain
    must not read as sharpness (at 3-4 px it outweighs the blurred edges at a one-pixel
    probe, and a motion-blurred frame read as sharp)."""
    source = shapes()[..., 0]
    weight = edge_weight(np.ones(source.shape, np.float32))
    cov = blur_to_match(source, grainy(blurred(source, sigma), 2.0, seed=5), weight)
    along = np.sqrt(np.clip(np.linalg.eigvalsh(cov), 0.0, None))
    assert along == pytest.approx([sigma, sigma], rel=0.2, abs=0.15)
    assert np.allclose(blur_to_match(source, source, weight), 0.0, atol=0.05)


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0])
def test_a_motion_blurred_frame_gives_a_blur_along_the_motion_only(angle: float) -> None:
    """A head moving during the exposure: the frame is blurred by 4 px along `angle`
    degrees and not across it; the source's blur follows (a crisp brow on a face smeared
    across it, or a blurred one where the frame is sharp, would each show)."""
    source = blurred(shapes(seed=3), 1.0)  # a photo's edges, not one-pixel aliased lines
    direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    motion = 16.0 * np.outer(direction, direction)
    frame = cv2.filter2D(source, -1, gaussian_kernel(motion), borderType=cv2.BORDER_REFLECT)
    cov = blur_to_match(source, frame, edge_weight(np.ones(source.shape[:2], np.float32)))
    values, vectors = np.linalg.eigh(cov)
    assert np.sqrt(values[1]) == pytest.approx(4.0, rel=0.3)
    assert np.sqrt(max(values[0], 0.0)) < 1.6  # an isotropic match would give about 3
    assert abs(vectors[:, 1] @ direction) > 0.95
    out, applied, _ = match_blur(source, frame, np.ones(source.shape[:2], np.float32))
    assert applied == pytest.approx(np.sqrt(values[1]))
    across = np.array([-direction[1], direction[0]])
    # the output's edges across the motion are as sharp as the source's, along it as soft
    # as the frame's (directional derivative energy, inside the border)
    def energy(img: np.ndarray, u: np.ndarray) -> float:
        grey = img.mean(-1)
        d = u[0] * cv2.Sobel(grey, cv2.CV_32F, 1, 0) + u[1] * cv2.Sobel(grey, cv2.CV_32F, 0, 1)
        return float((d[20:-20, 20:-20] ** 2).sum())
    assert energy(out, direction) == pytest.approx(energy(frame, direction), rel=0.45)
    # an isotropic blur as long would leave much less detail across the motion
    assert energy(out, across) > 1.5 * energy(blurred(source, applied), across)


def test_a_sharp_source_is_blurred_to_a_blurred_frame_and_left_on_a_sharp_one() -> None:
    source = shapes(seed=1)
    frame = blurred(shapes(seed=2), 2.5)
    trust = np.ones(source.shape[:2], np.float32)
    out, sigma, frame_blur = match_blur(source, frame, trust)
    assert sigma == pytest.approx(2.5, rel=0.2)
    assert frame_blur == pytest.approx(edge_blur(frame, edge_weight(trust)))
    same, none, _ = match_blur(source, shapes(seed=2), trust)
    assert none == 0.0 and same is source


def test_the_cut_around_kept_eyes_is_as_soft_as_the_frame() -> None:
    disk = np.zeros((128, 128), np.float32)
    cv2.circle(disk, (64, 64), 30, 1.0, -1)
    assert np.array_equal(soft_cut(disk, 0.0), disk)
    cut = soft_cut(disk, 2.0)
    added = blur_to_match(disk, cut, edge_weight(np.ones(disk.shape, np.float32)))
    assert np.sqrt(np.linalg.eigvalsh(added)) == pytest.approx([2.0, 2.0], rel=0.25)
    assert cut.min() >= 0 and cut.max() <= 1


def laplacian_std(img: np.ndarray, mask: np.ndarray) -> float:
    """Std of the grey Laplacian inside `mask` (`img` float in [0, 1])."""
    grey = cv2.cvtColor(np.asarray(img, np.float32), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_32F)[mask].std())


def freckles(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """H x W float: one-pixel dots (1) at random places, 0 elsewhere."""
    dots = np.zeros(shape, np.float32)
    rng = np.random.default_rng(seed)
    dots[rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)] = 1.0
    return dots


def transferred_detail(sigma: float, sharpness: bool = True) -> float:
    """Laplacian std inside the swapped face, output over the frame's: a source albedo
    with sharp freckles onto an actor frame with freckles of its own, the frame blurred by
    `sigma` frame pixels (0: as rendered)."""
    from morph3d.swap.transfer import transfer_face
    from tests.test_transfer import device_inputs, face_in_window

    args, keywords = device_inputs(torch.device("cpu"))
    textures = args[3].clone()
    size = textures.shape[0]
    dots = freckles((size, size), size * size // 200, seed=3)
    textures[..., :3] *= torch.from_numpy(1 - 0.6 * dots)[..., None]
    frame = args[9].astype(np.float32)
    frame *= 1 - 0.4 * freckles(frame.shape[:2], frame.size // 150, seed=4)[..., None]
    soft = np.round(blurred(frame, sigma)).astype(np.uint8)
    out = transfer_face(*args[:3], textures, *args[4:9], soft, args[10],
                        sharpness=sharpness, **keywords)
    x, y = out["window"]
    h, w = out["image"].shape[:2]
    face = cv2.erode(face_in_window(out).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    before = soft[y:y + h, x:x + w].astype(np.float32) / 255
    return laplacian_std(out["image"], face) / laplacian_std(before, face)


def test_the_swapped_faces_detail_follows_a_blurred_frames() -> None:
    """On the frame blurred by 2.5 px the source's freckles come as blurred as the frame:
    the output's fine detail stays near the frame's instead of the sharp photo's."""
    sharp, soft = transferred_detail(0.0), transferred_detail(2.5)
    assert 0.5 < sharp < 1.6
    assert 0.7 < soft < 1.15  # the photo's sharpness on the blurred frame: about 1.3


def test_the_compiled_energies_are_the_sobel_and_laplacian_sums() -> None:
    """One pass gives the four directional second-derivative energies and the Laplacian's
    as OpenCV's Sobel and Laplacian (reflected borders, weight on the border too) give
    them, to float32 rounding."""
    from morph3d.swap.sharpness import _energies

    rng = np.random.default_rng(2)
    grey = cv2.GaussianBlur(rng.random((90, 70)).astype(np.float32), (0, 0), 1.0)
    weight = (rng.random(grey.shape) > 0.4).astype(np.float32) * rng.random(grey.shape)
    weight[:, 0] = weight[-1] = 1.0
    for sigma in (2.0, 5.0):
        b = cv2.GaussianBlur(grey, (0, 0), sigma)
        dxx = cv2.Sobel(b, cv2.CV_32F, 2, 0, ksize=1)
        dyy = cv2.Sobel(b, cv2.CV_32F, 0, 2, ksize=1)
        dxy = cv2.Sobel(b, cv2.CV_32F, 1, 1, ksize=3) * np.float32(0.25)
        mean = 0.5 * (dxx + dyy)
        lap = cv2.Laplacian(b, cv2.CV_32F)
        expected = [float((d * d * weight).sum(dtype=np.float64))
                    for d in (dxx, mean + dxy, dyy, mean - dxy, lap)]
        assert np.allclose(_energies(grey, sigma, weight.astype(np.float32)), expected,
                           rtol=1e-5, atol=0)
