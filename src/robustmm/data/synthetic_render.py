"""Renderers of the synthetic benchmark: discrete messages in, raw image / text / audio out.

Each renderer receives, for every attribute its modality reveals, a message symbol: a value index in
`0 .. NUM_VALUES - 1`, or `OMITTED`. The symbol decides WHAT is shown; the random generator only decides HOW
(position, size, hue, stripe phase, wording, loudness, onset times, noise), so a perfect reader recovers the
symbols from the signal. Omission is rendered by text only, as an attribute that the sentence does not mention.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

NUM_VALUES = 4
OMITTED = NUM_VALUES
"""Message symbol of an attribute that the modality does not reveal for this sample."""

# ---------------------------------------------------------------------------------------------------- image

COLOURS = np.array([(0.86, 0.14, 0.12), (0.12, 0.66, 0.20), (0.14, 0.28, 0.90), (0.96, 0.84, 0.08)])
"""Object fill: red, green, blue, yellow."""
STRIPES = (1, 2, 3, 6)
"""Background stripe periods per image side, one per value of `beats`: the image counterpart of the beep count."""
SUPERSAMPLING = 4


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Circle, square, triangle (apex up) or cross, in coordinates where the shape spans about [-1, 1]."""
    if shape == 0:
        return u**2 + v**2 <= 1.0
    if shape == 1:
        return np.maximum(abs(u), abs(v)) <= 0.85
    if shape == 2:
        return (v <= 0.8) & (abs(u) <= 0.95 * (v + 0.9) / 1.7)
    return ((abs(u) <= 0.3) & (abs(v) <= 0.95)) | ((abs(v) <= 0.3) & (abs(u) <= 0.95))


def render_image(colour: int, shape: int, beats: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A coloured shape over a striped grey background; the stripe frequency encodes `beats`."""
    grid = (np.arange(size * SUPERSAMPLING) + 0.5) / (size * SUPERSAMPLING)
    y, x = np.meshgrid(grid, grid, indexing="ij")

    along = y if rng.random() < 0.5 else x
    dark = ((along * STRIPES[beats] + rng.random()) % 1.0) < rng.uniform(0.4, 0.6)
    light_level = rng.uniform(0.75, 0.95)
    dark_level = light_level - rng.uniform(0.3, 0.5)
    canvas = np.where(dark, dark_level, light_level)[..., None].repeat(3, axis=-1)

    centre = 0.5 + rng.uniform(-0.12, 0.12, size=2)
    radius = rng.uniform(0.22, 0.3)
    angle = rng.uniform(-0.15, 0.15)
    du, dv = (x - centre[0]) / radius, (y - centre[1]) / radius
    u = np.cos(angle) * du + np.sin(angle) * dv
    v = -np.sin(angle) * du + np.cos(angle) * dv
    inside = _shape_mask(shape, u, v)
    fill = np.clip(COLOURS[colour] + rng.uniform(-0.08, 0.08, size=3), 0.0, 1.0)
    canvas[inside] = fill

    pixels = canvas.reshape(size, SUPERSAMPLING, size, SUPERSAMPLING, 3).mean(axis=(1, 3))
    pixels = pixels + rng.normal(0.0, rng.uniform(0.01, 0.04), size=pixels.shape)
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------------------------------- text

SHAPE_WORDS = (
    ("round", "circular", "disc-shaped", "ball-like", "coin-shaped"),
    ("square", "boxy", "cube-like", "block-shaped", "four-sided"),
    ("triangular", "three-cornered", "wedge-shaped", "pyramid-like", "tent-shaped"),
    ("cross-shaped", "plus-shaped", "cruciform", "four-armed", "x-shaped"),
)
TASTE_WORDS = (
    ("sweet", "sugary", "honeyed", "candy-flavoured", "syrupy"),
    ("sour", "tart", "tangy", "lemony", "vinegary"),
    ("salty", "briny", "salted", "sea-salty", "savoury"),
    ("bitter", "acrid", "coffee-bitter", "harsh-tasting", "burnt-tasting"),
)
PITCH_PHRASES = (
    ("that hums low", "with a deep rumble", "with a booming bass note", "that growls", "with a low drone"),
    ("with a mellow tone", "that hums mid-range", "with a moderate voice", "with a middle tone", "that speaks evenly"),
    ("that chirps", "with a high tone", "that sings like a bird", "with a bright beep", "that tweets"),
    ("with a shrill whistle", "that squeals", "with a piercing whine", "that shrieks", "with an ear-splitting squeak"),
)
NOUNS = ("thing", "object", "gadget", "item", "toy", "trinket", "widget", "contraption", "knick-knack")
OPENERS = ("A", "This is a", "Here is a", "I found a", "Look at this", "There is a", "Meet the", "We got a", "Behold a")


def _pick(options, rng: np.random.Generator) -> str:
    return options[rng.integers(len(options))]


def render_text(taste: int, shape: int, pitch: int, rng: np.random.Generator) -> str:
    """One short sentence in varied wording (synonyms, word order, opener, noun): short, because the text
    encoder's cost grows with every token. An OMITTED attribute is simply not mentioned."""
    adjectives = [_pick(words[value], rng) for words, value in ((SHAPE_WORDS, shape), (TASTE_WORDS, taste))
                  if value != OMITTED]
    rng.shuffle(adjectives)
    noun_phrase = " ".join([", ".join(adjectives), _pick(NOUNS, rng)]).strip()
    opener = _pick(OPENERS, rng)
    if opener.endswith(" a") and noun_phrase[0] in "aeiou":
        opener += "n"
    if opener == "A" and noun_phrase[0] in "aeiou":
        opener = "An"
    pitch_phrase = "" if pitch == OMITTED else " " + _pick(PITCH_PHRASES[pitch], rng)
    return f"{opener} {noun_phrase}{pitch_phrase}."


# ---------------------------------------------------------------------------------------------------- audio

PITCHES_HZ = (220.0, 440.0, 880.0, 1760.0)
BEEPS = (1, 2, 3, 6)
"""Beeps per clip, one per value of `beats`."""
RAMP_SECONDS = 0.005


def _waveform(timbre: int, phase: np.ndarray, pitch_hz: float, sample_rate: int, rng) -> np.ndarray:
    """Pure (sine), buzzy (odd harmonics, square-like), bright (all harmonics, saw-like) or breathy (sine + noise)."""
    if timbre in (1, 2):
        harmonics = np.arange(1, int(0.45 * sample_rate / pitch_hz) + 1)
        if timbre == 1:
            harmonics = harmonics[harmonics % 2 == 1]
        wave = sum(np.sin(n * phase) / n for n in harmonics)
    else:
        wave = np.sin(phase)
        if timbre == 3:
            wave = wave + rng.normal(0.0, 1.0, size=phase.shape)
    return wave / np.sqrt(np.mean(wave**2))


def render_audio(
    timbre: int, pitch: int, beats: int, seconds: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """`BEEPS[beats]` evenly spread tone bursts of one pitch and timbre, over a faint noise floor."""
    length = int(round(seconds * sample_rate))
    t = np.arange(length) / sample_rate
    pitch_hz = PITCHES_HZ[pitch] * np.exp(rng.normal(0.0, 0.03))
    tone = _waveform(timbre, 2 * np.pi * pitch_hz * t + rng.uniform(0, 2 * np.pi), pitch_hz, sample_rate, rng)

    margin = 0.03 * seconds / 0.5
    slot = (seconds - 2 * margin) / BEEPS[beats]
    envelope = np.zeros(length)
    ramp = max(1, int(RAMP_SECONDS * sample_rate))
    for i in range(BEEPS[beats]):
        duration = slot * rng.uniform(0.5, 0.7)
        start = margin + slot * i + rng.uniform(0.0, slot - duration)
        first, last = int(start * sample_rate), int((start + duration) * sample_rate)
        edge = min(ramp, (last - first) // 2)
        fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
        envelope[first:last] = 1.0
        envelope[first : first + edge] = fade
        envelope[last - edge : last] = fade[::-1]

    gain = rng.uniform(0.1, 0.3)
    audio = gain * envelope * tone + gain * rng.uniform(0.005, 0.02) * rng.normal(0.0, 1.0, size=length)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
