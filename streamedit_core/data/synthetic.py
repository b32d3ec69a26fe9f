"""Synthetic edit pairs from still photos: the training data of the demo model and the edit
benchmark's ground truth (`eval.benchmark` reuses everything here).

- Photos: scikit-image's bundled colour photos (`skimage.data`, no download).
- Motion: a seeded camera path (pan, zoom, rotation as one affine `grid_sample` per frame)
  plus a few moving patches, so clips have real motion for the temporal losses.
- Edits: `FAMILIES`, each a pure torch function on frames `[T, H, W, 3]` in `[0, 1]` and
  several paraphrases. The empty prompt is the identity ("no edit"), matching the text
  ensemble's null embedding.
- Splits: by photo AND by paraphrase, from a hash of the name (`split_photos`,
  `split_paraphrases`), so validation/test ask for unseen wording on unseen images.
"""
from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import footage

SPLITS = ("train", "validation", "test")
IDENTITY_PROMPT = ""  # the null prompt: target == source

# --- Edit functions: [T, H, W, 3] float in [0, 1] -> same shape -------------------------------
_LUMA = (0.299, 0.587, 0.114)


def _luma(x: Tensor) -> Tensor:
    """[..., 3] -> [..., 1] Rec.601 luma."""
    w = x.new_tensor(_LUMA)
    return (x * w).sum(-1, keepdim=True)


def grayscale(x: Tensor) -> Tensor:
    return _luma(x).expand_as(x).clone()


def sepia(x: Tensor) -> Tensor:
    m = x.new_tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    return (x @ m.T).clamp(0, 1)


def invert(x: Tensor) -> Tensor:
    return 1.0 - x


def _colorize(x: Tensor, rgb: tuple[float, float, float]) -> Tensor:
    """Overlay-blend the luma with a named colour: shading kept, hue replaced."""
    y, c = _luma(x), x.new_tensor(rgb)
    return torch.where(y < 0.5, 2 * y * c, 1 - 2 * (1 - y) * (1 - c)).clamp(0, 1)


def _channels_first(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Run an [N, 3, H, W] image op on [T, H, W, 3] frames."""
    def wrapped(x: Tensor) -> Tensor:
        return fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
    return wrapped


# In pixels at every frame size, like pixelate's 8-pixel blocks and sketch's 3x3 edges: the DiT
# learns an edit on the latent grid, so a blur that scaled with the frame (width / 32 until
# 2026-12-01) was a sigma of 1 where the DiT trains (32 px) and 2 where it is scored (64 px),
# and the model made the weaker one (run 12's outputs on the test blurs: 34.3 dB against a
# sigma-1 blur, 29.2 against the ground truth).
BLUR_SIGMA = 2.0


@_channels_first
def blur(x: Tensor) -> Tensor:
    sigma = BLUR_SIGMA
    r = int(math.ceil(2.5 * sigma))
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    g = (g / g.sum()).view(1, 1, -1)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@_channels_first
def pixelate(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // 8), max(1, w // 8)), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def posterize(x: Tensor) -> Tensor:
    return torch.floor(x * 3.999) / 3.0


def brighter(x: Tensor) -> Tensor:
    return (x * 1.35 + 0.08).clamp(0, 1)


def darker(x: Tensor) -> Tensor:
    return x * 0.5


def warm(x: Tensor) -> Tensor:
    return (x * x.new_tensor([1.15, 1.0, 0.8]) + x.new_tensor([0.04, 0.01, 0.0])).clamp(0, 1)


def cool(x: Tensor) -> Tensor:
    return (x * x.new_tensor([0.8, 1.0, 1.15]) + x.new_tensor([0.0, 0.01, 0.04])).clamp(0, 1)


@_channels_first
def sketch(x: Tensor) -> Tensor:
    """Pencil sketch: dark strokes where the luma has edges (Sobel), on white paper."""
    y = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)  # [N, 1, H, W]
    k = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    yp = F.pad(y, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(yp, k.view(1, 1, 3, 3))
    gy = F.conv2d(yp, k.T.contiguous().view(1, 1, 3, 3))
    paper = 1.0 - (2.0 * torch.sqrt(gx ** 2 + gy ** 2 + 1e-8)).clamp(0, 1)
    return paper.expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class EditFamily:
    """A procedural edit: `apply(frames [T, H, W, 3] in [0, 1]) -> [T, H, W, 3] in [0, 1]`."""
    name: str
    fn: Callable[[Tensor], Tensor]
    paraphrases: tuple[str, ...]  # split by paraphrase: one test, one validation, the rest train
    train_only: tuple[str, ...] = ()  # more training wordings, never in validation or test
    looks: tuple[str, ...] = ()  # words for the result, put in LOOK_TEMPLATES for more training wordings

    def apply(self, frames: Tensor) -> Tensor:
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"edit {self.name!r} expects frames [T, H, W, 3], got {tuple(frames.shape)}")
        return self.fn(frames.float()).clamp(0, 1)

    def templated(self) -> tuple[str, ...]:
        """Every LOOK_TEMPLATES frame filled with every look (before split_paraphrases drops
        those too close to held-out wording)."""
        return tuple(t.format(look) for look in self.looks for t in LOOK_TEMPLATES)

    def wordings(self) -> tuple[str, ...]:
        """Every wording of the family, all splits: paraphrases, train-only and templated."""
        return self.paraphrases + self.train_only + self.templated()


# Instruction frames that every family's `looks` fill in: the training wordings then share
# phrasing across families, so telling the edits apart means reading the words that name them
# (MiniLM's mean sentence vector puts "give it a warm tint" and "give it an icy tint" at cosine
# 0.84). Measured 2026-11-30 with run 4's STLE, the demo edit map fitted alone scored on the
# first 26 test pairs 20.09 dB -> 20.79 with these wordings (mean text pooling), and 21.63 ->
# 22.06 with attention pooling; asked with a training wording instead, it scores about 25 dB.
LOOK_TEMPLATES = ("make it {}", "make the video {}", "can you make this {}", "make every frame {}",
                  "I want the footage {}", "turn the whole clip {}", "{} please", "make the picture look {}")
# A templated wording this close (word edits) to a held-out wording of its family is dropped:
# "make it {darker}" would be the test wording itself.
HELD_OUT_MIN_EDITS = 3

FAMILIES: dict[str, EditFamily] = {f.name: f for f in (
    EditFamily("grayscale", grayscale, (
        "make it black and white", "convert to grayscale", "remove all the colour",
        "turn it into a monochrome video", "desaturate everything", "make it look like an old black-and-white film"),
        train_only=(
        "drain the colour out of the scene", "make the footage monochrome", "show it in shades of grey",
        "make it colourless", "strip out every hue", "give it a black-and-white look", "greyscale please",
        "render it without any colour"),
        looks=("black and white", "monochrome", "grey", "colourless")),
    EditFamily("sepia", sepia, (
        "apply a sepia tone", "make it look like an old sepia photograph", "give it a vintage brown tint",
        "turn it sepia", "age the footage with a sepia filter", "make it look antique and brownish"),
        train_only=(
        "give it a sepia look", "make it look like a faded old photo", "add a warm brown vintage filter",
        "make it sepia toned", "tint it like an antique print", "give it an old-timey brown look",
        "make it look like a 1900s photograph", "use a sepia colour grade"),
        looks=("sepia", "brownish and old", "sepia toned", "like an old brown photo")),
    EditFamily("invert", invert, (
        "invert the colors", "make it a photo negative", "flip every colour to its opposite",
        "turn it into a negative image", "reverse the colours", "show it as a film negative"),
        train_only=(
        "invert the image", "negate all the colours", "make it look like a negative",
        "swap each colour for its complement", "turn light into dark and dark into light",
        "apply a colour inversion", "show the inverted colours", "flip the brightness and the hues"),
        looks=("inverted", "negative", "colour-inverted", "the opposite colours")),
    EditFamily("hue_red", functools.partial(_colorize, rgb=(0.9, 0.15, 0.1)), (
        "make everything red", "tint the whole scene red", "turn the colours to shades of red",
        "recolour it in red", "give it a deep red hue", "paint the video red"),
        train_only=(
        "make it all red", "colour the scene crimson", "wash everything in red", "give it a red tint",
        "turn it scarlet", "make it look red all over", "recolour the video with red tones",
        "bathe it in red light"),
        looks=("red", "all red", "crimson", "scarlet")),
    EditFamily("hue_blue", functools.partial(_colorize, rgb=(0.1, 0.3, 0.95)), (
        "make everything blue", "tint the whole scene blue", "turn the colours to shades of blue",
        "recolour it in blue", "give it a deep blue hue", "paint the video blue"),
        train_only=(
        "make it all blue", "colour the scene navy blue", "wash everything in blue", "give it a blue tint",
        "turn it azure", "make it look blue all over", "recolour the video with blue tones",
        "bathe it in blue light"),
        looks=("blue", "all blue", "navy", "azure")),
    EditFamily("blur", blur, (
        "blur the video", "make it blurry", "apply a soft gaussian blur",
        "make everything out of focus", "smooth away the details", "defocus the image"),
        train_only=(
        "make it soft and fuzzy", "add a blur", "blur everything a little", "make the picture unsharp",
        "soften all the edges", "make it look hazy and blurred", "apply a smoothing filter",
        "throw it out of focus"),
        looks=("blurry", "out of focus", "soft and fuzzy", "unsharp")),
    EditFamily("pixelate", pixelate, (
        "pixelate it", "make it look like 8-bit pixel art", "turn it into big blocky pixels",
        "apply a mosaic effect", "lower the resolution into chunky pixels", "make it look retro and pixelated"),
        train_only=(
        "make it pixelated", "turn it into coarse blocks", "make the pixels huge",
        "give it a low-res pixel look", "censor it with pixels", "make it look like an old video game",
        "pixelize the frames", "make it blocky"),
        looks=("pixelated", "blocky", "low-res", "chunky 8-bit")),
    EditFamily("posterize", posterize, (
        "posterize the colours", "reduce it to a few flat colours", "make it look like a screen print",
        "use only a handful of colour levels", "give it a flat poster look", "quantize the colours"),
        train_only=(
        "make it posterized", "flatten the colours into bands", "cut the number of colours",
        "give it a pop-art poster style", "use fewer colour steps", "make the shading flat and banded",
        "simplify the colours into flat areas", "reduce the colour depth"),
        looks=("posterized", "flat and banded", "few-coloured", "poster-like")),
    EditFamily("brighter", brighter, (
        "make it brighter", "brighten the video", "increase the exposure",
        "make the scene lighter", "turn up the brightness", "make it look sunny and bright"),
        train_only=(
        "make it lighter", "lighten the footage", "raise the exposure", "add more light",
        "make everything brighter", "boost the brightness", "make the image more luminous", "brighten it up"),
        looks=("brighter", "lighter", "more exposed", "bright")),
    EditFamily("darker", darker, (
        "make it darker", "darken the video", "lower the exposure",
        "make the scene look like dusk", "turn down the brightness", "make it dim and shadowy"),
        train_only=(
        "make it dimmer", "dim the footage", "reduce the exposure", "take away some light",
        "make everything darker", "lower the brightness", "make the image gloomier", "darken it down"),
        looks=("darker", "dimmer", "less exposed", "dim")),
    EditFamily("warm", warm, (
        "give it a warm tint", "make the colours warmer", "add a golden hour glow",
        "make it look warm and cosy", "shift the white balance to warm", "add an orange warmth"),
        train_only=(
        "make it warmer", "warm up the colours", "add a warm orange tone", "give it a sunset feel",
        "push the colours toward yellow and orange", "make the light feel warm", "use a warm colour grade",
        "give it a cosy amber tint"),
        looks=("warmer", "warm", "golden and warm", "orange-warm")),
    EditFamily("cool", cool, (
        "give it a cool tint", "make the colours colder", "add a cold blue cast",
        "make it look wintry and cool", "shift the white balance to cool", "give it a chilly look"),
        train_only=(
        "make it cooler", "cool down the colours", "add a cool blue tone", "give it a cold winter feel",
        "push the colours toward blue", "make the light feel cold", "use a cool colour grade",
        "give it an icy tint"),
        looks=("cooler", "cool", "cold and blue", "chilly")),
    EditFamily("sketch", sketch, (
        "make it a pencil sketch", "turn it into a line drawing", "draw it in pencil on white paper",
        "make it look hand-sketched", "convert to a graphite drawing", "render it as an ink outline"),
        train_only=(
        "make it a drawing", "turn it into a pencil drawing", "sketch it in pencil",
        "make it look drawn by hand", "draw the outlines in black on white", "make it a charcoal sketch",
        "turn the scene into line art", "make it look like a sketchbook page"),
        looks=("a pencil sketch", "hand-drawn", "like line art", "sketched")),
)}


# Wordings that ask for no edit (a vocabulary's "none": the source passes through). Ours, split
# like the families': train wordings go into a model's vocabulary, validation ones set its
# out-of-vocabulary threshold, test ones check that unseen wordings find "none" too.
NO_EDIT_WORDINGS = {
    "train": ("leave it as it is", "no change", "keep the video unchanged", "don't change anything",
              "leave the video alone", "no edit please", "keep the original look", "leave every frame untouched",
              "do not edit it", "keep it the way it is"),
    "validation": ("leave the footage as it is",),
    "test": ("do nothing", "leave it unchanged", "make no changes", "keep it exactly the same",
             "don't edit this video"),
}


# Prompts that ask for what no family does (painting styles, content and motion changes, things
# that are no video edit at all), written once to measure how many out-of-vocabulary prompts a
# model's vocabulary flags; never used to choose its threshold (the validation wordings do that).
FOREIGN_PROMPTS = (
    "make it a watercolor painting", "turn it into an oil painting", "make it look like a cartoon",
    "add snow falling", "make the person smile", "replace the sky with a sunset", "make it look like van gogh",
    "add a cat", "make it cyberpunk", "turn day into night", "make it look like a comic book", "add rain",
    "make it 3d animated", "zoom in", "remove the background", "make it anime style", "add fire",
    "speed it up", "translate to french", "make it look like a claymation")


# --- Splits ----------------------------------------------------------------------------------
def _hash01(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64


def _split_by_rank(keys: tuple[str, ...], salt: str, n_test: int, n_val: int, split: str) -> tuple[str, ...]:
    """Rank keys by a salted hash: the first n_test are test, the next n_val validation, the
    rest train. Deterministic, and never leaves a split empty (unlike thresholding a hash)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    ranked = sorted(keys, key=lambda k: _hash01(f"{salt}:{k}"))
    parts = {"test": ranked[:n_test], "validation": ranked[n_test:n_test + n_val],
             "train": ranked[n_test + n_val:]}
    return tuple(k for k in keys if k in parts[split])  # original order


def split_paraphrases(family: str, split: str) -> tuple[str, ...]:
    """The paraphrases of `family` in `split`: one test, one validation, the rest train; the
    train split also gets the family's `train_only` wordings."""
    if family not in FAMILIES:
        raise ValueError(f"unknown edit family {family!r}; expected one of {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    ranked = _split_by_rank(fam.paraphrases, f"paraphrase:{family}", 1, 1, split)
    if split != "train":
        return ranked
    held_out = [w for s in ("validation", "test") for w in split_paraphrases(family, s)]
    templated = tuple(w for w in fam.templated()
                      if all(word_edits(w, h) >= HELD_OUT_MIN_EDITS for h in held_out))
    return tuple(dict.fromkeys(ranked + fam.train_only + templated))


def word_edits(a: str, b: str) -> int:
    """Levenshtein distance between two wordings counted in words."""
    x, y = a.split(), b.split()
    row = list(range(len(y) + 1))
    for i, u in enumerate(x, 1):
        diag, row[0] = row[0], i
        for j, v in enumerate(y, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (u != v))
    return row[-1]


def wording_words() -> set[str]:
    """Every word (runs of lower-case letters) of every family's wordings, all splits."""
    return {w for f in FAMILIES.values() for text in f.wordings()
            for w in re.findall(r"[a-z]+", text.lower())}


# --- Photos ----------------------------------------------------------------------------------
# scikit-image's colour photos (bundled with the package; `cat` is `chelsea` again, left out).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "colorwheel", "retina", "logo")
_PHOTO_SIDE = 256  # photos are kept at this short side: crops of 32..128 px need no more


def split_photos(split: str) -> tuple[str, ...]:
    """Photos of a split: two test, one validation, six train."""
    return _split_by_rank(PHOTOS, "photo", 2, 1, split)


@functools.lru_cache(maxsize=len(PHOTOS))
def load_photo(name: str) -> Tensor:
    """Photo `name` from skimage.data as [3, H, W] float32 in [0, 1], short side _PHOTO_SIDE."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; expected one of {PHOTOS}")
    import numpy as np
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    x = torch.from_numpy(img.astype(np.float32) / 255.0)
    if x.shape[-1] == 4:  # RGBA (logo): composite on white
        x = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    x = x.permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W]
    scale = _PHOTO_SIDE / min(x.shape[-2:])
    size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
    return F.interpolate(x, size=size, mode="area" if scale < 1 else "bilinear", align_corners=None)[0]


def photo_clip(photo: str, *, frames: int, size: int, seed: int) -> Tensor:
    """A clip [frames, size, size, 3] float32 in [0, 1]: `photo` under a seeded camera path
    (pan + zoom + rotation, linear in time) with two moving patches on top."""
    if frames < 1 or size < 8:
        raise ValueError(f"photo_clip needs frames >= 1 and size >= 8, got frames={frames}, size={size}")
    rng = random.Random(f"clip:{photo}:{seed}")
    img = load_photo(photo)  # [3, H, W]
    _, h, w = img.shape
    s = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)  # path parameter per frame
    # 1. Camera: zoom (fraction of the short side seen), rotation and centre, from start to end.
    def path(lo: float, hi: float) -> Tensor:  # [T] from a random start to a random end
        a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
        return a + (b - a) * s

    zoom, angle, cx, cy = path(0.35, 0.8), path(-0.2, 0.2), path(-0.3, 0.3), path(-0.3, 0.3)
    sx, sy = zoom * min(h, w) / w, zoom * min(h, w) / h  # square crop in normalised coordinates
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, cx], -1),
                         torch.stack([sx * sin, sy * cos, cy], -1)], -2).float()  # [T, 2, 3]
    grid = F.affine_grid(theta, [frames, 3, size, size], align_corners=False)
    clip = F.grid_sample(img.expand(frames, -1, -1, -1), grid, mode="bilinear",
                         padding_mode="reflection", align_corners=False)  # [T, 3, size, size]
    # 2. Moving patches: solid squares of random colour, moving linearly across the frame.
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(2):
        half = rng.uniform(0.06, 0.15) * size
        colour = torch.tensor([rng.random(), rng.random(), rng.random()]).view(3, 1, 1)
        x0, y0, x1, y1 = (rng.uniform(0, size) for _ in range(4))
        for i in range(frames):
            px, py = x0 + (x1 - x0) * float(s[i]), y0 + (y1 - y0) * float(s[i])
            mask = ((xx - px).abs() < half) & ((yy - py).abs() < half)
            clip[i] = torch.where(mask, colour, clip[i])
    return clip.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


# --- Dataset ---------------------------------------------------------------------------------
# Underexposed clips (`underexposed_fraction`) are dimmed by a gain drawn log-uniformly from this
# range: the training photos average 0.26 (rocket) to 0.71 (logo) in [0, 1], while night scenes,
# dim rooms and star fields average under 0.1. The edits are then made on the dimmed clip.
UNDEREXPOSED_GAIN = (0.1, 1.0)


def underexposure_gain(u: float) -> float:
    """The gain at quantile u in [0, 1] of a log-uniform draw from UNDEREXPOSED_GAIN (each
    halving of the light as likely)."""
    lo, hi = UNDEREXPOSED_GAIN
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def underexpose(frames: Tensor, gain: float) -> Tensor:
    """frames [..., 3] in [0, 1] -> the same scene with `gain` times the light (a darker exposure)."""
    if not 0.0 < gain <= 1.0:
        raise ValueError(f"an underexposure gain must be in (0, 1], got {gain}")
    return frames * gain


class SyntheticEditDataset:
    """Edit pairs generated on the fly; item `p` depends only on (seed, p).

    Each item: {"source", "target": [3, T, H, W] float32 in [0, 1], "prompt": str}. A fraction
    `identity_fraction` of items are identity pairs with the empty prompt (null = no edit).
    A fraction `underexposed_fraction` of clips are dimmed (`underexpose`, gain in
    UNDEREXPOSED_GAIN) before the edit, so that dark footage is in the training distribution:
    only clips with no edit or an edit in `underexposed_families` (default: every family).
    A fraction `footage_fraction` of clips (train split only) come from the train-only footage
    of `train.footage` instead of the split's photos.
    `length` (default: every photo x family x paraphrase of the split, x 8 clips) bounds the
    index space: `length=4` gives a fixed set of 4 pairs, for overfitting tests.
    """

    def __init__(self, split: str = "train", *, frames: int = 8, size: int = 32, seed: int = 0,
                 identity_fraction: float = 0.1, length: int | None = None,
                 families: tuple[str, ...] | None = None, underexposed_fraction: float = 0.0,
                 underexposed_families: tuple[str, ...] | None = None,
                 footage_fraction: float = 0.0) -> None:
        self.photos = split_photos(split)
        self.families = tuple(sorted(FAMILIES)) if families is None else tuple(families)
        self.underexposed_families = (frozenset(FAMILIES) if underexposed_families is None
                                      else frozenset(underexposed_families))
        for f in (*self.families, *self.underexposed_families):
            if f not in FAMILIES:
                raise ValueError(f"unknown edit family {f!r}; expected one of {sorted(FAMILIES)}")
        if not 0.0 <= identity_fraction <= 1.0:
            raise ValueError(f"identity_fraction must be in [0, 1], got {identity_fraction}")
        if not 0.0 <= underexposed_fraction <= 1.0:
            raise ValueError(f"underexposed_fraction must be in [0, 1], got {underexposed_fraction}")
        if not 0.0 <= footage_fraction <= 1.0:
            raise ValueError(f"footage_fraction must be in [0, 1], got {footage_fraction}")
        if footage_fraction and split != "train":
            raise ValueError(f"footage_fraction is for the train split only (the footage never "
                             f"appears in the benchmark), got split {split!r}")
        # Found now, so that a missing package fails here and not in the first batch.
        self.footage = footage.footage_paths() if footage_fraction else ()
        self.footage_fraction = footage_fraction
        self.split, self.frames, self.size, self.seed = split, frames, size, seed
        self.identity_fraction = identity_fraction
        self.underexposed_fraction = underexposed_fraction
        self.prompts = {f: split_paraphrases(f, split) for f in self.families}
        default = len(self.photos) * sum(len(p) for p in self.prompts.values()) * 8
        self.length = default if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")

    def __len__(self) -> int:
        return self.length

    def all_prompts(self) -> list[str]:
        """Every prompt an item can carry (for pre-encoding the text once)."""
        return [IDENTITY_PROMPT] + [p for f in self.families for p in self.prompts[f]]

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(f"synthetic:{self.split}:{self.seed}:{int(index) % self.length}")
        photo, clip_seed = rng.choice(self.photos), rng.randrange(2**31)
        family, prompt = None, IDENTITY_PROMPT
        if rng.random() >= self.identity_fraction:
            family = rng.choice(self.families)
            prompt = rng.choice(self.prompts[family])
        # Drawn after everything else, in this order, so that a fraction of 0 leaves every item
        # as it was before the option existed.
        dims = family is None or family in self.underexposed_families
        gain = None
        if self.underexposed_fraction > 0 and rng.random() < self.underexposed_fraction and dims:
            gain = underexposure_gain(rng.random())
        if self.footage_fraction > 0 and rng.random() < self.footage_fraction:
            clip = footage.footage_clip(rng.choice(self.footage), frames=self.frames, size=self.size,
                                        seed=rng.randrange(2**31))
        else:
            clip = photo_clip(photo, frames=self.frames, size=self.size, seed=clip_seed)
        if gain is not None:
            clip = underexpose(clip, gain)
        target = clip if family is None else FAMILIES[family].apply(clip)
        return {"source": clip.permute(3, 0, 1, 2).contiguous(),  # [3, T, H, W]
                "target": target.permute(3, 0, 1, 2).contiguous(), "prompt": prompt}
