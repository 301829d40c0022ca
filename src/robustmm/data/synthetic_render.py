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

SHAPE_ADJECTIVES = (
    ("round", "circular", "disc-shaped", "ball-like", "perfectly round"),
    ("square", "boxy", "cube-like", "block-shaped", "four-sided"),
    ("triangular", "three-cornered", "wedge-shaped", "pyramid-like", "pointy triangular"),
    ("cross-shaped", "plus-shaped", "cruciform", "plus-like", "four-armed"),
)
SHAPE_CLAUSES = (
    ("it is shaped like a coin", "its outline is a circle", "it looks like a little ball", "it has no corners at all"),
    ("it has four equal sides", "its outline is a square", "it looks like a small box", "it is shaped like a dice"),
    ("it has three corners", "it is shaped like a slice of pizza", "its outline is a triangle",
     "it looks like a tiny tent"),
    ("it looks like a plus sign", "its arms form a cross", "it is shaped like a first-aid cross",
     "it has four arms sticking out"),
)
TASTE_ADJECTIVES = (
    ("sweet", "sugary", "honeyed", "candy-flavoured"),
    ("sour", "tart", "tangy", "lemony"),
    ("salty", "briny", "salted", "sea-salty"),
    ("bitter", "acrid", "coffee-bitter", "harsh-tasting"),
)
TASTE_CLAUSES = (
    ("it tastes sweet", "it is sugary", "it has a honeyed flavour", "it tastes like candy", "it is sweet as syrup"),
    ("it tastes sour", "it is tart", "it has a tangy, lemony bite", "it tastes like vinegar", "it makes you pucker"),
    ("it tastes salty", "it is briny", "it tastes like sea water", "it is full of salt", "it tastes of salted crisps"),
    ("it tastes bitter", "it is acrid", "it tastes like strong black coffee", "it has a harsh bitter flavour",
     "it tastes like burnt toast"),
)
PITCH_CLAUSES = (
    ("it hums in a deep voice", "it makes a low rumble", "its sound is a booming bass note",
     "it drones at a low pitch", "it growls like a big engine"),
    ("it makes a mellow mid-range tone", "it hums at a medium pitch", "its voice is neither high nor low",
     "it sounds like an ordinary speaking voice", "it gives off a moderate, middle tone"),
    ("it chirps at a high pitch", "it makes a high tone", "it sings like a small bird",
     "its sound is bright and high", "it beeps fairly high"),
    ("it lets out a shrill whistle", "it squeals at a piercing pitch", "it makes an ear-splitting squeak",
     "its sound is a piercing whine like a mosquito", "it shrieks at an extremely high pitch"),
)
NOUNS = ("thing", "object", "gadget", "item", "toy", "trinket", "widget", "contraption", "knick-knack")
OPENERS = (
    "This is a", "Here we have a", "I found a", "Look at this", "Someone left a", "There is a", "My neighbour owns a",
    "We were given a", "Meet the", "Behold a",
)
SETTINGS = (
    "", "", "", " in the kitchen", " at the market", " from the attic", " on the shelf", " in a shoebox",
    " from the fair", " near the window",
)
CONNECTORS = ("; ", ", and ", ". Also, ", ". On top of that, ", "; moreover, ", ", while ")
FILLERS = ("", "", "", "honestly, ", "apparently ", "I think ", "as far as I can tell, ", "to be fair, ")
NOTHING = (
    "Nothing else stands out about it.", "That is all anyone noticed.", "No other details were given.",
    "It is rather unremarkable otherwise.",
)


def _pick(options, rng: np.random.Generator) -> str:
    return options[rng.integers(len(options))]


def render_text(taste: int, shape: int, pitch: int, rng: np.random.Generator) -> str:
    """One or two sentences in varied wording; an OMITTED attribute is simply not mentioned."""
    adjectives, clauses = [], []
    if shape != OMITTED:
        if rng.random() < 0.6:
            adjectives.append(_pick(SHAPE_ADJECTIVES[shape], rng))
        else:
            clauses.append(_pick(SHAPE_CLAUSES[shape], rng))
    if taste != OMITTED:
        if rng.random() < 0.3:
            adjectives.append(_pick(TASTE_ADJECTIVES[taste], rng))
        else:
            clauses.append(_pick(TASTE_CLAUSES[taste], rng))
    if pitch != OMITTED:
        clauses.append(_pick(PITCH_CLAUSES[pitch], rng))
    rng.shuffle(adjectives)
    rng.shuffle(clauses)

    noun_phrase = " ".join([", ".join(adjectives), _pick(NOUNS, rng)]).strip()
    opener = _pick(OPENERS, rng)
    if opener.endswith(" a") and noun_phrase[0] in "aeiou":
        opener += "n"
    text = f"{opener} {noun_phrase}{_pick(SETTINGS, rng)}"
    if not clauses:
        return f"{text}. {_pick(NOTHING, rng)}"
    body = clauses[0]
    for clause in clauses[1:]:
        body += _pick(CONNECTORS, rng) + clause
    return f"{text}: {_pick(FILLERS, rng)}{body}."


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
