"""The default head's identity space and its prior: MakeHuman's macro modifiers (the default
adult; the macro-target weights of any adult), the face and head identity targets grouped by
the slider that drives them, and random adults drawn from the prior below.
`morph3d.builders.head` runs the build that uses them.

The identity prior (documented here once; the README repeats it):
- gender ~ U(0, 1), age ~ U(25, 70) years, ethnicity weights ~ Dirichlet(1, 1, 1),
  muscle ~ U(0.3, 0.7), weight ~ U(0.3, 0.7) (MakeHuman slider units);
- every two-sided face/head target pair (decr/incr, down/up, in/out, ...) gets a slider
  s ~ N(0, 0.2^2) clipped to [-1, 1]; left/right pairs share their slider up to
  N(0, 0.05^2) of asymmetry; one-sided shape targets (head-oval, chin-triangle, ...) get
  max(0, N(0, 0.15^2)).
The spreads were chosen so that the face width at the zygia and the nasion-menton height
of samples stay within adult ranges (tests/test_model.py checks it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morph3d.builders.makehuman import dense_target, read_target

IDENTITY_TARGET_FOLDERS = (
    "head", "forehead", "eyebrows", "eyes", "nose", "mouth", "cheek", "chin", "ears", "neck",
)
# Targets that only translate or age the head: translation is removed by alignment and age
# comes from the macro targets, so these would only add noise to the basis.
EXCLUDED_TARGETS = re.compile(r"(head-trans-|neck-trans-|head-age-|measure-neck-height)")
TWO_SIDED = (
    ("decr", "incr"), ("down", "up"), ("in", "out"), ("backward", "forward"),
    ("concave", "convex"), ("compress", "uncompress"), ("angle-in", "angle-out"),
)


# ---------------------------------------------------------------------------------------------
# 2. The default adult
# ---------------------------------------------------------------------------------------------

RACES = ("african", "asian", "caucasian")


def macro_target_weights(gender: float, age_years: float, race: np.ndarray, muscle: float,
                         weight: float) -> dict[str, float]:
    """MakeHuman's macro-target weights (file stem -> weight) for adult slider values.

    Mirrors MakeHuman's macro modifiers for adults: age 25 = 'young', 90 = 'old'
    (linear in between), muscle/weight 0 = min, 0.5 = average, 1 = max.
    """
    old = float(np.clip((age_years - 25.0) / 65.0, 0.0, 1.0))
    genders = {"female": 1.0 - gender, "male": gender}
    ages = {"young": 1.0 - old, "old": old}

    def three_way(value: float, names: tuple[str, str, str]) -> dict[str, float]:
        if value < 0.5:
            return {names[0]: (0.5 - value) / 0.5, names[1]: value / 0.5}
        return {names[1]: (1.0 - value) / 0.5, names[2]: (value - 0.5) / 0.5}

    muscles = three_way(muscle, ("minmuscle", "averagemuscle", "maxmuscle"))
    weights = three_way(weight, ("minweight", "averageweight", "maxweight"))
    out: dict[str, float] = {}
    for g, wg in genders.items():
        for a, wa in ages.items():
            for r, wr in zip(RACES, race, strict=True):
                out[f"{r}-{g}-{a}"] = out.get(f"{r}-{g}-{a}", 0.0) + wg * wa * wr
            for m, wm in muscles.items():
                for w, ww in weights.items():
                    key = f"universal-{g}-{a}-{m}-{w}"
                    out[key] = out.get(key, 0.0) + wg * wa * wm * ww
    return {k: v for k, v in out.items() if v > 1e-9}


def default_adult_offsets(data: Path, num_vertices: int) -> np.ndarray:
    """Offsets (N x 3, dm) turning the base mesh into MakeHuman's default adult."""
    weights = macro_target_weights(0.5, 25.0, np.full(3, 1 / 3), 0.5, 0.5)
    total = np.zeros((num_vertices, 3))
    for stem, w in weights.items():
        total += w * dense_target(data / "mpfb2/targets/macrodetails" / f"{stem}.target.gz",
                                  num_vertices)
    return total


# ---------------------------------------------------------------------------------------------
# 4. Identity targets and the prior
# ---------------------------------------------------------------------------------------------


@dataclass
class TargetSet:
    names: list[str]
    matrix: np.ndarray  # T x V x 3 offsets on the cropped head, dm
    sliders: list[tuple[str, ...]]  # groups of target indices driven by one slider


def identity_target_matrix(data: Path, vertex_ids: np.ndarray, num_vertices: int) -> TargetSet:
    """All identity targets restricted to the head, plus how sliders drive them."""
    remap = np.full(num_vertices, -1, dtype=np.int64)
    remap[vertex_ids] = np.arange(len(vertex_ids))
    names: list[str] = []
    mats: list[np.ndarray] = []

    def add(name: str, path: Path) -> None:
        ids, offsets = read_target(path)
        keep = remap[ids] >= 0
        dense = np.zeros((len(vertex_ids), 3))
        dense[remap[ids[keep]]] = offsets[keep]
        names.append(name)
        mats.append(dense)

    macro = data / "mpfb2/targets/macrodetails"
    for g in ("female", "male"):
        for a in ("young", "old"):
            for r in RACES:
                add(f"{r}-{g}-{a}", macro / f"{r}-{g}-{a}.target.gz")
            for m in ("minmuscle", "averagemuscle", "maxmuscle"):
                for w in ("minweight", "averageweight", "maxweight"):
                    stem = f"universal-{g}-{a}-{m}-{w}"
                    add(stem, macro / f"{stem}.target.gz")
    for folder in IDENTITY_TARGET_FOLDERS:
        for path in sorted((data / "mpfb2/targets" / folder).glob("*.target.gz")):
            stem = path.name[: -len(".target.gz")]
            if not EXCLUDED_TARGETS.search(stem):
                add(stem, path)
    index = {n: i for i, n in enumerate(names)}
    local = [n for n in names if n not in _macro_names()]
    sliders: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for n in local:
        if n in seen:
            continue
        partner = None
        for low, high in TWO_SIDED:
            if n.endswith("-" + low) and n[: -len(low)] + high in index:
                partner = n[: -len(low)] + high
                break
            if n.endswith("-" + high) and n[: -len(high)] + low in index:
                partner = n[: -len(high)] + low
                break
        if partner is not None:
            pair = tuple(sorted((n, partner), key=lambda s: _is_positive(s)))
            sliders.append(pair)  # (negative, positive)
            seen.update(pair)
        else:
            sliders.append((n,))
            seen.add(n)
    return TargetSet(names, np.stack(mats), sliders)


def _macro_names() -> set[str]:
    out = set()
    for g in ("female", "male"):
        for a in ("young", "old"):
            out.update(f"{r}-{g}-{a}" for r in RACES)
            out.update(f"universal-{g}-{a}-{m}-{w}"
                       for m in ("minmuscle", "averagemuscle", "maxmuscle")
                       for w in ("minweight", "averageweight", "maxweight"))
    return out


def _is_positive(name: str) -> bool:
    return any(name.endswith("-" + high) for _, high in TWO_SIDED)


def _mirror_name(name: str) -> str | None:
    if name.startswith("l-"):
        return "r-" + name[2:]
    if name.startswith("r-"):
        return "l-" + name[2:]
    return None


TWO_SIDED_SIGMA = 0.2
ONE_SIDED_SIGMA = 0.15
ASYMMETRY_SIGMA = 0.05


def sample_identity_weights(targets: TargetSet, count: int, seed: int = 0) -> np.ndarray:
    """count x T target weights drawn from the prior in this module's docstring."""
    rng = np.random.default_rng(seed)
    index = {n: i for i, n in enumerate(targets.names)}
    weights = np.zeros((count, len(targets.names)))
    for s in range(count):
        macro = macro_target_weights(
            gender=rng.uniform(0, 1), age_years=rng.uniform(25, 70),
            race=rng.dirichlet(np.ones(3)), muscle=rng.uniform(0.3, 0.7),
            weight=rng.uniform(0.3, 0.7),
        )
        for stem, w in macro.items():
            weights[s, index[stem]] = w
        shared: dict[str, float] = {}
        for slider in targets.sliders:
            key = slider[-1]
            mirror = _mirror_name(key)
            if mirror is not None and mirror in shared:
                value = shared[mirror] + rng.normal(0, ASYMMETRY_SIGMA)
            elif len(slider) == 2:
                value = rng.normal(0, TWO_SIDED_SIGMA)
            else:
                value = max(0.0, rng.normal(0, ONE_SIDED_SIGMA))
            value = float(np.clip(value, -1, 1))
            shared[key] = value
            if len(slider) == 2:
                neg, pos = slider
                weights[s, index[pos]] = max(value, 0.0)
                weights[s, index[neg]] = max(-value, 0.0)
            else:
                weights[s, index[slider[0]]] = max(value, 0.0)
    return weights
