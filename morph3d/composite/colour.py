"""Colour: sRGB/linear/Lab conversions, robust statistics, and the render's skin matched to
the actor's by per-channel gains carried between frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# --------------------------------------------------------------------------------------------
# 3. Colour matching
# --------------------------------------------------------------------------------------------


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """float32 RGB [0, 1] -> Lab (L in [0, 100], a and b about [-127, 127])."""
    return cv2.cvtColor(np.clip(image, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2Lab)


def robust_stats(samples: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and MAD-based standard deviation of N x C samples.

    Medians ignore the freckles, specular highlights, stubble and stray hair that pull a
    plain mean; the std is floored at `min_std` so a flat render cannot blow up the gain.
    """
    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    median = np.median(samples, axis=0)
    mad = np.median(np.abs(samples - median), axis=0)
    return median, np.maximum(1.4826 * mad, min_std)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (the IEC 61966-2-1 curve)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights of linear RGB


@dataclass
class ColourState:
    """Per-channel medians (linear RGB) of the actor's skin and of the render's skin,
    averaged over frames. Carried between frames so the colour transfer does not flicker."""

    actor_median: np.ndarray
    render_median: np.ndarray
    frames: int = 1

    def blended(self, other: ColourState, momentum: float) -> ColourState:
        """Exponential moving average: `momentum` of self plus the rest of `other`."""
        m = float(np.clip(momentum, 0.0, 1.0))
        return ColourState(m * self.actor_median + (1.0 - m) * other.actor_median,
                           m * self.render_median + (1.0 - m) * other.render_median,
                           self.frames + 1)

    def gains(self, keep_chroma: float = 0.0, max_light: float = 16.0, max_tint: float = 3.0
              ) -> np.ndarray:
        """Per-channel gains on linear RGB that take the render's skin median to the actor's.

        A gain per channel is a change of light, so a dark brow stays a dark brow of the same
        hue, where an additive Lab shift turned khabenskii.jpg's brows teal. The gains split
        into one luminance gain (exposure: a dark render may need a large one, up to
        `max_light`) and a tint per channel relative to it (white balance, bounded by
        `max_tint`). `keep_chroma` (0..1) keeps that share of the source's own skin tone:
        the tint is raised to the power 1 - keep_chroma; the skin's luminance still becomes
        the actor's."""
        render = np.maximum(self.render_median, 1e-4)
        luminance = float((LUMINANCE @ self.actor_median) / (LUMINANCE @ render))
        light = float(np.clip(luminance, 1.0 / max_light, max_light))
        tint = np.clip(self.actor_median / render / max(luminance, 1e-6), 1.0 / max_tint,
                       max_tint) ** (1.0 - float(np.clip(keep_chroma, 0.0, 1.0)))
        return light * tint * (LUMINANCE @ render) / float(LUMINANCE @ (tint * render))


def match_colour(render: np.ndarray, frame: np.ndarray, skin: np.ndarray, *,
                 state: ColourState | None = None, momentum: float = 0.8,
                 keep_chroma: float = 0.0, min_pixels: int = 64, max_samples: int = 20000
                 ) -> tuple[np.ndarray, ColourState | None]:
    """Match the render's skin colour to the actor's by a gain per linear-RGB channel.

    The medians come from the same `skin` pixels (bool H x W: face skin under the mask,
    eyes, brows, mouth and occluders left out) in the frame and in the render; both faces
    are in the same pose, so the same pixels are the same part of the face. With `state`
    from the previous frame the medians are averaged (`momentum` of the old); the new state
    is returned. Too few skin pixels (the face is covered): the old state's gains are
    applied and the state kept, or the render is returned unchanged when there is no state
    yet. `keep_chroma`: see `ColourState.gains`.
    """
    skin = np.asarray(skin, bool)
    if int(skin.sum()) < min_pixels:
        if state is None:
            return render, None
        return apply_gains(render, state.gains(keep_chroma)), state
    index = np.flatnonzero(skin)
    index = index[:: len(index) // max_samples + 1]  # a regular subsample bounds the cost
    current = ColourState(np.median(srgb_to_linear(frame.reshape(-1, 3)[index]), axis=0),
                          np.median(srgb_to_linear(render.reshape(-1, 3)[index]), axis=0))
    state = current if state is None else state.blended(current, momentum)
    return apply_gains(render, state.gains(keep_chroma)), state


def apply_gains(render: np.ndarray, gains: np.ndarray, knee: float = 0.7) -> np.ndarray:
    """`render` (sRGB, [0, 1]) with each linear channel multiplied by its gain; values
    above `knee` roll off smoothly towards 1 instead of clipping (a dark render brought up
    to a bright actor would otherwise burn its highlights into flat white patches)."""
    linear = srgb_to_linear(render) * gains.astype(np.float32)
    span = 1.0 - knee
    if span > 0:
        over = linear > knee
        linear[over] = knee + span * np.tanh((linear[over] - knee) / span)
    return linear_to_srgb(linear)
