"""Synthetic chest radiograph anatomy for the RSNA phantom.

The image is built as an attenuation map (bright = more tissue in the beam, as in MONOCHROME2):
body soft tissue, lung fields (dark), mediastinum, heart, spine, ribs, clavicles, diaphragm,
lung markings, then findings (opacities, nodules, devices), and finally a film response curve
with per-patient exposure and quantum noise. Shapes are drawn with Pillow at 1/8 to 1/2 of the
final resolution and smoothed with scipy; textures are random crops of noise fields built once per
process. Everything a patient gets comes from the random generators it is given.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

SIZE = 1024
HALF = SIZE // 2
LOW = 128  # canvas size for shapes that end up heavily blurred
_V, _U = np.mgrid[0:HALF, 0:HALF].astype(np.float32) / HALF  # half-resolution grid in [0, 1)


def _canvas(size: int = HALF) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("F", (size, size), 0.0)
    return image, ImageDraw.Draw(image)


def _px(points, size: int = HALF) -> list[tuple[float, float]]:
    return [(float(u) * size, float(v) * size) for u, v in points]


def _smooth(image: Image.Image, sigma: float) -> np.ndarray:
    """Blur a canvas by ``sigma`` of its own pixels and return it at half resolution."""
    blurred = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma)
    if image.size[0] == HALF:
        return blurred
    return np.asarray(Image.fromarray(blurred, mode="F").resize((HALF, HALF), Image.BILINEAR))


def filtered_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian noise low-passed at ``sigma`` pixels, rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / (noise.std() + 1e-6)


class _Textures:
    """Noise fields shared by all patients (built once per process); patients take random crops."""

    def __init__(self) -> None:
        rng = np.random.default_rng(20180827)
        margin = 256
        self.grain = rng.standard_normal((SIZE + margin, SIZE + margin), dtype=np.float32)
        fine = filtered_noise(rng, (HALF + margin, HALF + margin), 3.0)
        coarse = filtered_noise(rng, (HALF + margin, HALF + margin), 8)
        self.coarse = filtered_noise(rng, (HALF + margin, HALF + margin), 40)
        self.blotches = filtered_noise(rng, (HALF + margin, HALF + margin), 14)  # opacity patches
        self.mottle = filtered_noise(rng, (HALF + margin, HALF + margin), 3.5)   # air bronchograms
        column = np.clip(1 - np.abs(_U - 0.5) / 0.04, 0, 1) ** 0.5
        self.spine = column * (0.85 + 0.15 * np.cos(np.pi * _V / 0.045) ** 2)
        self.hilum = 0.3 + np.exp(-(((np.abs(_U - 0.5) - 0.12) / 0.15) ** 2 + ((_V - 0.45) / 0.2) ** 2))
        self.vessels = np.exp(-(fine / 0.2) ** 2) * (0.6 + 0.4 * np.tanh(coarse))  # curvy ridge lines

    @staticmethod
    def crop(field: np.ndarray, rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
        rows, cols = (size, size) if isinstance(size, int) else size
        top = rng.integers(0, field.shape[0] - rows + 1)
        left = rng.integers(0, field.shape[1] - cols + 1)
        patch = field[top:top + rows, left:left + cols]
        return patch[::-1] if rng.random() < 0.5 else patch


_TEXTURES: _Textures | None = None


def _textures() -> _Textures:
    global _TEXTURES
    if _TEXTURES is None:
        _TEXTURES = _Textures()
    return _TEXTURES


def _lung_outline(rng, side: int, view: str) -> list[tuple[float, float]]:
    """Polygon of one lung field; ``side`` -1 = image left, +1 = image right."""
    apex_v = 0.16 + rng.normal(0, 0.015)
    base_v = (0.74 if view == "AP" else 0.80) + rng.normal(0, 0.025)
    medial_u = 0.5 + side * (0.075 + rng.normal(0, 0.008))
    lateral_u = 0.5 + side * (0.36 + rng.normal(0, 0.015))
    points = []
    for t in np.linspace(0, 1, 14):  # lateral wall: apex -> costophrenic angle, bulging outwards
        u = medial_u + (lateral_u - medial_u) * (0.35 + 0.65 * np.sin(np.pi / 2 * min(1.0, t * 1.6)))
        points.append((u, apex_v + (base_v + 0.03 - apex_v) * t))
    for t in np.linspace(0, 1, 10):  # diaphragm dome, higher medially
        u = lateral_u + (medial_u - lateral_u) * t
        points.append((u, base_v + 0.03 - 0.07 * np.sin(np.pi / 2 * t)))
    points.append((medial_u, apex_v + 0.06))  # mediastinal border back up to the apex
    points.append((medial_u + side * 0.05, apex_v))
    return points


def _body(rng) -> np.ndarray:
    """Soft-tissue thickness: a torso thicker in the middle, neck, shoulders and arms."""
    image, draw = _canvas(LOW)
    width = 0.45 + rng.normal(0, 0.03)
    shoulder_v = 0.10 + rng.normal(0, 0.02)
    v = np.linspace(shoulder_v + 0.1, 1.05, 12)
    wall = width - 0.03 * np.cos(np.pi * (v - 0.55)) - 0.02  # ribcage widest at mid-chest
    torso = ([(0.5 - w, vv) for w, vv in zip(wall[::-1], v[::-1])]
             + [(0.5 - width + 0.08, shoulder_v), (0.38, shoulder_v - 0.04), (0.40, -0.05), (0.60, -0.05),
                (0.62, shoulder_v - 0.04), (0.5 + width - 0.08, shoulder_v)]
             + [(0.5 + w, vv) for w, vv in zip(wall, v)])
    draw.polygon(_px(torso, LOW), fill=1.0)
    for side in (-1, 1):  # upper arms at the film edge
        cu = 0.5 + side * (width + 0.03)
        draw.ellipse(_px([(cu - 0.06, shoulder_v - 0.02), (cu + 0.06, 1.4)], LOW), fill=0.8)
    outline = _smooth(image, 2.5)
    depth = np.sqrt(np.clip(1 - ((_U - 0.5) / (width + 0.05)) ** 2, 0, 1))
    return outline * (0.45 + 0.55 * depth)


def _lungs(rng, view: str) -> tuple[np.ndarray, list]:
    image, draw = _canvas(LOW)
    outlines = [_lung_outline(rng, side, view) for side in (-1, 1)]
    for outline in outlines:
        draw.polygon(_px(outline, LOW), fill=1.0)
    return _smooth(image, 1.3), outlines


def _heart(rng, view: str, base_v: float) -> np.ndarray:
    """Mediastinum, heart (larger on AP films) and aortic knob."""
    image, draw = _canvas(LOW)
    draw.polygon(_px([(0.43, 0.0), (0.57, 0.0), (0.585, 0.5), (0.415, 0.5)], LOW), fill=1.0)
    scale = (1.15 if view == "AP" else 1.0) * (1 + rng.normal(0, 0.06))
    width, height = 0.165 * scale, 0.115 * scale
    cu, cv = 0.555 + rng.normal(0, 0.01), base_v - 0.03 - height + rng.normal(0, 0.015)
    angle = np.deg2rad(25 + rng.normal(0, 5))  # long axis pointing down to the cardiac apex
    t = np.linspace(0, 2 * np.pi, 40)
    u = cu + width * np.cos(t) * np.cos(angle) - height * np.sin(t) * np.sin(angle)
    v = cv + width * np.cos(t) * np.sin(angle) + height * np.sin(t) * np.cos(angle)
    draw.polygon(_px(zip(u, v), LOW), fill=1.0)
    draw.ellipse(_px([(0.52, 0.25), (0.60, 0.32)], LOW), fill=1.0)  # aortic knob
    return _smooth(image, 1.5)


def _bones(rng, view: str, apex_v: float) -> np.ndarray:
    """Posterior ribs (arcs curving down laterally), fainter anterior ribs and the clavicles,
    with bright cortical edges, drawn at quarter resolution."""
    size = HALF // 2
    image, draw = _canvas(size)
    slope = 0.75 if view == "AP" else 1.0  # AP films show more horizontal posterior ribs
    thick = max(2, round(size * (0.02 + rng.normal(0, 0.002))))
    t = np.linspace(0, 0.42, 24)
    for side in (-1, 1):
        for k in range(10):
            v0 = apex_v - 0.05 + k * (0.064 + rng.normal(0, 0.003))
            u = 0.5 + side * (0.03 + t)
            v = v0 - 0.05 * t + slope * 1.25 * t ** 2
            draw.line(_px(zip(u, v), size), fill=1.0, width=thick)
            ua = 0.5 + side * (0.1 + t[:18] * 0.75)  # anterior rib: from the lateral wall down-medially
            va = v0 + 0.16 + 0.25 * (0.3 - t[:18])
            draw.line(_px(zip(ua, va), size), fill=0.25, width=thick)
        c = np.linspace(0, 1, 20)  # clavicle
        lift = 0.03 if view == "AP" else 0.0
        u = 0.5 + side * (0.04 + 0.28 * c)
        v = 0.2 - lift - 0.07 * c + 0.02 * np.sin(np.pi * c) + rng.normal(0, 0.008)
        draw.line(_px(zip(u, v), size), fill=3.0, width=round(size * 0.026))
    bones = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), 0.6)
    bones += 0.8 * (bones - ndimage.uniform_filter(bones, 4))
    return np.asarray(Image.fromarray(bones, mode="F").resize((HALF, HALF), Image.BILINEAR))


def _lung_markings(rng) -> np.ndarray:
    """Vessel-like curvy lines, denser and thicker towards the hila."""
    return _textures().crop(_textures().vessels, rng, HALF) * _textures().hilum


def _breasts(rng, base_v: float) -> np.ndarray:
    """Soft shadows over the lower lung fields."""
    image, draw = _canvas(LOW)
    size = rng.uniform(0.11, 0.17)
    for side in (-1, 1):
        cu, cv = 0.5 + side * rng.uniform(0.2, 0.26), base_v - 0.02 + rng.normal(0, 0.02)
        draw.ellipse(_px([(cu - size * 1.2, cv - size), (cu + size * 1.2, cv + size)], LOW), fill=1.0)
    return _smooth(image, 3) * (1 - np.clip((_V - base_v - 0.02) / 0.05, 0, 1))


def synthesize_attenuation(rng: np.random.Generator, view: str, sex: str = "M") -> tuple[np.ndarray, np.ndarray]:
    """Half-resolution attenuation map of a normal chest and the lung-field mask (both (512, 512))."""
    body = _body(rng)
    lungs, outlines = _lungs(rng, view)
    apex_v = float(np.mean([min(p[1] for p in outline) for outline in outlines]))
    base_v = float(np.mean([max(p[1] for p in outline) for outline in outlines]))
    heart = _heart(rng, view, base_v)
    inside = body > 0.2
    lung_air = lungs * (1 - heart)
    below = np.clip((_V - base_v + 0.1) / 0.06, 0, 1) * inside * (1 - lung_air) * (1 - heart)
    bone_view = 0.35 + 0.65 * lung_air  # bones stand out against air, fade into soft tissue
    # lungs are brighter towards the bases (overlying soft tissue) and unevenly aerated
    basal = np.clip((_V - apex_v) / (base_v - apex_v), 0, 1) ** 2
    aeration = 0.12 * basal + 0.04 * _textures().crop(_textures().coarse, rng, HALF)
    attenuation = (body * (1 - 0.8 * lung_air) + aeration * lung_air + 0.35 * below + 0.25 * heart * inside
                   + 0.15 * _textures().spine * inside * (1 - 0.6 * lung_air)
                   + 0.09 * _bones(rng, view, apex_v) * bone_view * inside
                   + 0.10 * _lung_markings(rng) * lung_air)
    if sex == "F":
        attenuation += rng.uniform(0.12, 0.25) * _breasts(rng, base_v) * inside
    return attenuation.astype(np.float32), lung_air.astype(np.float32)


def add_opacity(attenuation: np.ndarray, lung_air: np.ndarray, rng: np.random.Generator, box,
                contrast: float) -> None:
    """Add a hazy, patchy consolidation inside ``box`` (x, y, width, height in 1024 pixels), in place.

    Consolidation replaces air, so it shows most over aerated lung, less over heart or diaphragm."""
    x, y, w, h = (float(v) / 2 for v in box)  # half-resolution pixels
    pad = int(max(w, h) * 0.2) + 4
    x0, y0 = max(int(x) - pad, 0), max(int(y) - pad, 0)
    x1, y1 = min(int(x + w) + pad, HALF), min(int(y + h) + pad, HALF)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    radius = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2
    shape = (y1 - y0, x1 - x0)
    edge = _textures().crop(_textures().blotches, rng, shape)
    mask = 1 / (1 + np.exp((radius + 0.25 * edge - 0.75) / 0.12))  # soft, irregular edge
    patches = 0.65 + 0.35 * np.tanh(_textures().crop(_textures().blotches, rng, shape) + 0.3)
    air = np.maximum(_textures().crop(_textures().mottle, rng, shape), 0)  # air bronchograms, mottling
    visible = 0.35 + 0.65 * lung_air[y0:y1, x0:x1]
    attenuation[y0:y1, x0:x1] += contrast * mask * patches * (1 - 0.2 * air) * visible


def add_nodule(attenuation: np.ndarray, rng: np.random.Generator, lung_air: np.ndarray) -> None:
    """A small round dense nodule somewhere in a lung field."""
    candidates = np.argwhere(lung_air > 0.8)
    cy, cx = candidates[rng.integers(len(candidates))]
    radius = rng.uniform(4, 12)
    top, left = max(cy - 30, 0), max(cx - 30, 0)
    yy, xx = np.mgrid[top:min(cy + 31, HALF), left:min(cx + 31, HALF)]
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / radius ** 2) ** 2)
    attenuation[top:top + blob.shape[0], left:left + blob.shape[1]] += rng.uniform(0.15, 0.35) * blob


def add_device(attenuation: np.ndarray, rng: np.random.Generator) -> None:
    """Lines and leads: a central line or tube, ECG electrodes with wires, sometimes a pacemaker."""
    image, draw = _canvas()
    kind = rng.integers(3)
    if kind == 0:  # central venous catheter / endotracheal tube
        u0 = 0.5 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.3)
        points = [(u0, 0.05), (0.5 + (u0 - 0.5) * 0.4, 0.2), (0.52, 0.3), (0.53, rng.uniform(0.38, 0.5))]
        draw.line(_px(points), fill=1.0, width=3)
    for _ in range(rng.integers(1, 4)):  # ECG electrodes and their wires
        u, v = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.7)
        draw.ellipse(_px([(u - 0.012, v - 0.012), (u + 0.012, v + 0.012)]), outline=1.0, width=3)
        end = (rng.uniform(0, 1), rng.choice([0.0, 1.0]))
        mid = ((u + end[0]) / 2 + rng.normal(0, 0.1), (v + end[1]) / 2)
        draw.line(_px([(u, v), mid, end]), fill=0.7, width=2)
    if kind == 2:  # pacemaker generator below the clavicle with its lead
        u = 0.5 + rng.choice([-1, 1]) * 0.28
        draw.rounded_rectangle(_px([(u - 0.035, 0.2), (u + 0.035, 0.25)]), radius=6, fill=1.0)
        draw.line(_px([(u, 0.225), (0.52, 0.3), (0.55, 0.55)]), fill=1.2, width=2)
    attenuation += 0.5 * _smooth(image, 0.7)


def to_pixels(attenuation_half: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Film response with random exposure, upsampling to 1024x1024, quantum noise -> uint8."""
    gain = rng.uniform(1.15, 1.5)
    signal = 1 - np.exp(-gain * np.maximum(attenuation_half + rng.uniform(-0.03, 0.05), 0))
    signal = 255 * rng.uniform(1.0, 1.1) * signal ** rng.uniform(1.0, 1.35)
    full = np.asarray(Image.fromarray(signal.astype(np.float32), mode="F").resize((SIZE, SIZE), Image.BILINEAR))
    grain = _textures().crop(_textures().grain, rng, SIZE)
    pixels = full + grain * rng.uniform(2.0, 5.0)
    return np.clip(pixels, 0, 255).astype(np.uint8)
