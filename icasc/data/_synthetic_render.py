"""Scene sampling and vectorised rendering for :mod:`icasc.data.synthetic` (private module).

A scene is sampled per image from its own ``torch.Generator`` (seeded by ``(seed, split, index)``), as a
handful of scalar parameters plus two small noise fields. Scenes are then rasterised in chunks with batched
tensor operations (single-threaded, see :func:`_single_thread`): about 1-2 s for 3000 64x64 images on a
small shared CPU.

Pixel ``(row, col)`` has its centre at ``(col + 0.5, row + 0.5)`` in continuous image coordinates; a box
``(x0, y0, x1, y1)`` uses pixel-edge coordinates, so it covers columns ``x0 .. x1 - 1`` and rows
``y0 .. y1 - 1``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring", "diamond")
"""Class shapes, in the order the class grid uses them. All are symmetric under a horizontal flip."""

TEXTURES: tuple[str, ...] = ("stripes_h", "checker", "dots", "stripes_v", "solid", "grid")
"""Class textures, in the order the class grid uses them. All are horizontal-flip invariant (up to phase)."""

MAX_CLASSES = len(SHAPES) * len(TEXTURES)

_BAR = len(SHAPES)  # distractor-only shape: an elongated, rotated ellipse (carries a texture, no class shape)
_SPECKLE = len(TEXTURES)  # distractor-only texture: blocky pseudo-random noise
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_MAX_BLOBS = 6
_MAX_LINES = 4
_N_CLUTTER = 7 * _MAX_BLOBS + 8 * _MAX_LINES
_OBJ_RANGE = (0.30, 0.55)  # object side as a fraction of the image side
_DISTRACTOR_RANGE = (0.14, 0.24)
_MULTI_OBJECT_SHRINK = 0.7  # object scale factor when a multi-label image holds 2+ objects
_PLACEMENT_TRIES = 20
_CHUNK = 256  # samples rasterised together at 64x64 (scaled down for larger images)
_MASK64 = (1 << 64) - 1

# Item parameter columns.
_F_SHAPE, _F_TEX, _F_CX, _F_CY, _F_HALF, _F_ANGLE, _F_ASPECT, _F_PHX, _F_PHY, _F_OBJ = range(10)
_F_COL_A = slice(10, 13)
_F_COL_B = slice(13, 16)
_N_ITEM_FIELDS = 16


def class_grid(num_classes: int) -> list[tuple[int, int]]:
    """Deterministic mapping ``class_id -> (shape_index, texture_index)``.

    The classes fill a ``n_shapes x n_textures`` grid row by row (texture-major), with
    ``n_textures = max(2, ceil(K / 6))`` and ``n_shapes = ceil(K / n_textures)``, so that each class shares
    its texture with the other classes of its row and (in all but a few edge cases) its shape with the
    classes of its column. For ``K = 10`` this is 5 shapes x 2 textures.

    Args:
        num_classes: Number of classes ``K``, in ``[1, 36]``.

    Returns:
        A list of ``K`` ``(shape_index, texture_index)`` pairs indexing :data:`SHAPES` and :data:`TEXTURES`.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
    n_tex = max(2, math.ceil(num_classes / len(SHAPES)))
    n_shapes = math.ceil(num_classes / n_tex)
    return [(k % n_shapes, k // n_shapes) for k in range(num_classes)]


def sample_seed(seed: int, split: str, index: int) -> int:
    """Derive the 63-bit generator seed of one sample from ``(seed, split, index)`` with splitmix64."""

    def mix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)

    h = mix(seed & _MASK64)
    h = mix(h ^ _SPLIT_IDS[split])
    h = mix(h ^ index)
    return h >> 1


@dataclass(frozen=True)
class SceneConfig:
    """Generation settings shared by all samples of a split (validated by the caller)."""

    num_classes: int
    image_size: int
    clutter: float
    distractors: int
    multilabel: bool
    max_objects: int


class _Uniforms:
    """Sequential U[0, 1) draws from a generator, fetched in blocks to amortise the per-call overhead."""

    def __init__(self, gen: torch.Generator, block: int = 128) -> None:
        self._gen = gen
        self._block = block
        self._buf: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        if self._pos == len(self._buf):
            self._buf = torch.rand(self._block, generator=self._gen, dtype=torch.float64).tolist()
            self._pos = 0
        self._pos += 1
        return self._buf[self._pos - 1]


def _colours(u: _Uniforms, bg: list[float]) -> list[float]:
    """Two colours that contrast with the background and with each other; independent of the class."""
    a, b = [], []
    for c in bg:
        a.append((c + 0.25 + 0.15 * u()) % 1.0)
        b.append((c + 0.60 + 0.15 * u()) % 1.0)
    return a + b if u() < 0.5 else b + a


def _place(
    u: _Uniforms, half: float, size: int, taken: list[tuple[float, float, float]]
) -> tuple[float, float]:
    """Random centre keeping a square of half-side ``half`` inside the image and off the ``taken`` squares.

    Best effort: after ``_PLACEMENT_TRIES`` overlapping candidates the last one is used.
    """
    cx = cy = size / 2
    for _ in range(_PLACEMENT_TRIES):
        cx = half + 1 + u() * (size - 2 * half - 2)
        cy = half + 1 + u() * (size - 2 * half - 2)
        if all(abs(cx - ox) > half + oh + 2 or abs(cy - oy) > half + oh + 2 for ox, oy, oh in taken):
            break
    return cx, cy


def _sample_scene(
    cfg: SceneConfig, grid: list[tuple[int, int]], seed: int, split: str, index: int
) -> tuple[list[int], Tensor, Tensor, list[float], Tensor, list[list[float]]]:
    """Sample one scene: object classes, noise fields, clutter and item parameters."""
    S = cfg.image_size
    gen = torch.Generator().manual_seed(sample_seed(seed, split, index))
    noise_lo = torch.rand(3, 4, 4, generator=gen) * 2 - 1
    noise_hi = torch.rand(1, S, S, generator=gen) * 2 - 1
    # Clutter (blobs and line segments) as raw uniforms, mapped to parameters in batch by _render_chunk.
    clutter = torch.rand(_N_CLUTTER, generator=gen)
    u = _Uniforms(gen)
    K = cfg.num_classes

    if cfg.multilabel:
        n_obj = 1 + min(int(u() * cfg.max_objects), cfg.max_objects - 1)
        pool = list(range(K))
        for i in range(n_obj):  # partial Fisher-Yates: distinct classes
            j = i + min(int(u() * (K - i)), K - i - 1)
            pool[i], pool[j] = pool[j], pool[i]
        classes = pool[:n_obj]
    else:
        classes = [index % K]  # exactly balanced, independent of access order

    bg = [0.15 + 0.7 * u() for _ in range(3)]

    shapes_used = sorted({s for s, _ in grid})
    tex_used = sorted({t for _, t in grid})
    class_set = set(grid)
    taken: list[tuple[float, float, float]] = []
    objects, distractors = [], []
    scale = 1.0 if len(classes) == 1 else _MULTI_OBJECT_SHRINK
    for k in classes:
        shape, tex = grid[k]
        half = 0.5 * S * scale * (_OBJ_RANGE[0] + (_OBJ_RANGE[1] - _OBJ_RANGE[0]) * u())
        cx, cy = _place(u, half, S, taken)
        taken.append((cx, cy, half))
        objects.append([shape, tex, cx, cy, half, 0.0, 1.0, u() * S, u() * S, 1.0, *_colours(u, bg)])
    for _ in range(cfg.distractors):
        half = 0.5 * S * (_DISTRACTOR_RANGE[0] + (_DISTRACTOR_RANGE[1] - _DISTRACTOR_RANGE[0]) * u())
        if u() < 0.5:  # a class shape with a texture that does not make it a class
            shape = shapes_used[min(int(u() * len(shapes_used)), len(shapes_used) - 1)]
            options = [t for t in range(len(TEXTURES) + 1) if (shape, t) not in class_set]
            tex = options[min(int(u() * len(options)), len(options) - 1)]
            angle, aspect = 0.0, 1.0
        else:  # a class texture on a bar, i.e. without any class shape
            shape = _BAR
            tex = tex_used[min(int(u() * len(tex_used)), len(tex_used) - 1)]
            angle, aspect = u() * math.pi, 0.3 + 0.15 * u()
        cx, cy = _place(u, half, S, taken)
        taken.append((cx, cy, half))
        distractors.append([shape, tex, cx, cy, half, angle, aspect, u() * S, u() * S, 0.0, *_colours(u, bg)])
    # Distractors are drawn first so that objects are never occluded by them.
    return classes, noise_lo, noise_hi, bg, clutter, distractors + objects


def _shape_mask(shape: int, dx: Tensor, dy: Tensor, half: Tensor, angle: Tensor, aspect: Tensor) -> Tensor:
    """Boolean mask of one shape kind for items with local offsets ``dx, dy`` of shape ``[n, S, S]``."""
    h = half[:, None, None]
    ax, ay = dx.abs(), dy.abs()
    if shape == 0:  # disc
        return dx * dx + dy * dy <= h * h
    if shape == 1:  # square
        return torch.maximum(ax, ay) <= h
    if shape == 2:  # triangle pointing up, base 2h at the bottom
        return (ay <= h) & (2 * ax <= dy + h)
    if shape == 3:  # cross (plus sign) with arm half-width h/3
        w = h / 3
        return ((ax <= w) & (ay <= h)) | ((ay <= w) & (ax <= h))
    if shape == 4:  # ring
        r2 = dx * dx + dy * dy
        return (r2 <= h * h) & (r2 >= (0.55 * h) ** 2)
    if shape == 5:  # diamond
        return ax + ay <= h
    # bar: rotated ellipse with semi-axes h and aspect * h
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    p, q = c * dx + s * dy, (-s * dx + c * dy) / aspect[:, None, None]
    return p * p + q * q <= h * h


def _texture(tex: int, x: Tensor, y: Tensor, period: float) -> Tensor:
    """Boolean pattern (True = second colour) of one texture kind at phase-shifted local coordinates."""
    if tex == 0:  # stripes_h
        return torch.frac(y / period) < 0.5
    if tex == 1:  # checker with cells of half a period
        return (torch.floor(2 * x / period) + torch.floor(2 * y / period)) % 2 == 1
    if tex == 2:  # dots
        fx, fy = torch.frac(x / period) - 0.5, torch.frac(y / period) - 0.5
        return fx * fx + fy * fy <= 0.09
    if tex == 3:  # stripes_v
        return torch.frac(x / period) < 0.5
    if tex == 4:  # solid
        return torch.zeros_like(x, dtype=torch.bool)
    if tex == 5:  # grid
        return (torch.frac(x / period) < 0.3) | (torch.frac(y / period) < 0.3)
    # speckle: blocky hash noise, only ever used on distractors
    bx, by = torch.floor(x / 2), torch.floor(y / 2)
    return torch.frac(torch.sin(bx * 12.9898 + by * 78.233) * 43758.5453) < 0.5


@functools.lru_cache(maxsize=8)
def _interp_matrix(size: int) -> Tensor:
    """``[size, 4]`` matrix doing bilinear upsampling (along one axis) of a 4-point noise grid."""
    eye = torch.eye(4).unsqueeze(1)  # [4, 1, 4]
    up = torch.nn.functional.interpolate(eye, size=size, mode="linear", align_corners=False)
    return up.squeeze(1).T.contiguous()


def _render_chunk(
    size: int, bg: Tensor, noise_lo: Tensor, noise_hi: Tensor, clutter: Tensor, items: Tensor, amount: float
) -> tuple[Tensor, Tensor]:
    """Rasterise a chunk of scenes.

    Returns:
        ``(images, object_ids)``: float images ``[B, 3, S, S]`` in ``[0, 1]`` and an int64 map ``[B, S, S]``
        holding, per pixel, ``1 + j`` for the ``j``-th object of the scene and ``0`` elsewhere.
    """
    S = size
    B, M, _ = items.shape
    coords = torch.arange(S, dtype=torch.float32) + 0.5
    X, Y = coords[None, None, :], coords[None, :, None]  # [1, 1, S] and [1, S, 1]

    img = bg[:, :, None, None].expand(B, 3, S, S).clone()
    if amount > 0:
        img += amount * (0.08 * (_interp_matrix(S) @ noise_lo @ _interp_matrix(S).T) + 0.04 * noise_hi)
        # Gaussian blobs: active with probability `amount`, separable in x and y.
        blob = clutter[:, : 7 * _MAX_BLOBS].reshape(B, _MAX_BLOBS, 7, 1)
        act = (blob[:, :, 0] < amount).float()
        bx, by, sig = blob[:, :, 1] * S, blob[:, :, 2] * S, S * (0.04 + 0.08 * blob[:, :, 3])
        gx = torch.exp(-((coords - bx) ** 2) / (2 * sig * sig))  # [B, NB, S]
        gy = torch.exp(-((coords - by) ** 2) / (2 * sig * sig)) * act
        g = gy[:, :, :, None] * gx[:, :, None, :]  # [B, NB, S, S]
        col = 0.24 * (blob[:, :, 4:7, 0] - 0.5)  # [B, NB, 3]
        img += (col.transpose(1, 2) @ g.reshape(B, _MAX_BLOBS, S * S)).reshape(B, 3, S, S)
        # Thin line segments: active with probability `amount`.
        line = clutter[:, 7 * _MAX_BLOBS :].reshape(B, _MAX_LINES, 8, 1, 1)
        act = line[:, :, 0] < amount
        x0, y0, x1, y1 = (line[:, :, i] * S for i in range(1, 5))
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2).sqrt().clamp_min(1e-3)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        along = (X - x0) * ux + (Y - y0) * uy  # [B, NL, S, S]
        perp = (Y - y0) * ux - (X - x0) * uy
        on = (perp.abs() <= 0.6) & ((along - length / 2).abs() <= length / 2) & act
        col = 0.24 * (line[:, :, 5:8, 0, 0] - 0.5)  # [B, NL, 3]
        img += (col.transpose(1, 2) @ on.float().reshape(B, _MAX_LINES, S * S)).reshape(B, 3, S, S)
        img.clamp_(0, 1)

    flat = items.reshape(B * M, _N_ITEM_FIELDS)
    dx = X - flat[:, _F_CX, None, None]
    dy = Y - flat[:, _F_CY, None, None]
    mask = torch.zeros(B * M, S, S, dtype=torch.bool)
    pattern = torch.zeros(B * M, S, S, dtype=torch.bool)
    shape_ids, tex_ids = flat[:, _F_SHAPE].long(), flat[:, _F_TEX].long()
    period = 6.0 * S / 64
    for shape in shape_ids.unique().tolist():
        if shape < 0:  # inactive padding slot
            continue
        sel = shape_ids == shape
        f = flat[sel]
        m = _shape_mask(shape, dx[sel], dy[sel], f[:, _F_HALF], f[:, _F_ANGLE], f[:, _F_ASPECT])
        mask[sel] = m.expand(-1, S, S)
    for tex in tex_ids.unique().tolist():
        if tex < 0:
            continue
        sel = tex_ids == tex
        f = flat[sel]
        tx = dx[sel] + f[:, _F_PHX, None, None]
        ty = dy[sel] + f[:, _F_PHY, None, None]
        pattern[sel] = _texture(tex, tx, ty, period).expand(-1, S, S)

    mask = mask.reshape(B, M, S, S)
    pattern = pattern.reshape(B, M, 1, S, S)
    colour = torch.where(pattern, items[:, :, _F_COL_B, None, None], items[:, :, _F_COL_A, None, None])
    object_ids = torch.zeros(B, S, S, dtype=torch.long)
    n_obj = torch.zeros(B, dtype=torch.long)
    for j in range(M):
        m = mask[:, j]
        img = torch.where(m[:, None], colour[:, j], img)
        is_obj = items[:, j, _F_OBJ] > 0
        n_obj += is_obj.long()
        object_ids = torch.where(m & is_obj[:, None, None], n_obj[:, None, None], object_ids)
    return img, object_ids


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops single-threaded, restoring the previous setting afterwards.

    The rasterisation is a long series of mid-sized element-wise ops; on small shared CPUs, intra-op
    threads then mostly wait for each other (generation measured ~7x slower with 2 threads next to a busy
    process), while one thread is both fast and predictable.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def render_split(
    cfg: SceneConfig, seed: int, split: str, num_samples: int
) -> tuple[Tensor, list[list[int]], Tensor]:
    """Generate a whole split.

    Returns:
        ``(images, classes, object_ids)``: uint8 images ``[N, 3, S, S]``, the object classes of each sample
        (in drawing order, i.e. object ``j`` is labelled ``j + 1`` in ``object_ids``), and the int8 object-id
        maps ``[N, S, S]``.
    """
    S = cfg.image_size
    grid = class_grid(cfg.num_classes)
    M = cfg.distractors + (cfg.max_objects if cfg.multilabel else 1)
    images = torch.empty(num_samples, 3, S, S, dtype=torch.uint8)
    object_ids = torch.empty(num_samples, S, S, dtype=torch.int8)
    all_classes: list[list[int]] = []
    chunk = max(1, _CHUNK * 64 * 64 // (S * S))  # bounds the memory of the batched rasterisation
    with _single_thread():
        for start in range(0, num_samples, chunk):
            stop = min(start + chunk, num_samples)
            B = stop - start
            bg = torch.empty(B, 3)
            noise_lo = torch.empty(B, 3, 4, 4)
            noise_hi = torch.empty(B, 1, S, S)
            clutter = torch.empty(B, _N_CLUTTER)
            rows: list[list[float]] = []
            for b in range(B):
                classes, lo, hi, bgc, clut, scene_items = _sample_scene(cfg, grid, seed, split, start + b)
                all_classes.append(classes)
                noise_lo[b], noise_hi[b], clutter[b] = lo, hi, clut
                bg[b] = torch.tensor(bgc)
                pad = [[-1.0] * _N_ITEM_FIELDS for _ in range(M - len(scene_items))]
                rows += pad + scene_items  # padding first: objects stay last in drawing order
            items = torch.tensor(rows, dtype=torch.float32).reshape(B, M, _N_ITEM_FIELDS)
            img, ids = _render_chunk(S, bg, noise_lo, noise_hi, clutter, items, cfg.clutter)
            images[start:stop] = (img * 255).round_().to(torch.uint8)
            object_ids[start:stop] = ids.to(torch.int8)
    return images, all_classes, object_ids
