"""A generated image / text / audio benchmark whose Bayes-optimal accuracy is known exactly.

Generative model (all probabilities are the generator's own, so nothing is estimated):

1. The class `y` is uniform over `num_classes`. Each class has a prototype: one value for each of six
   attributes with four values each (colour, taste, timbre, shape, pitch, beats). The prototypes are drawn
   from the seed, balanced (every value is used equally often per attribute) and as far apart as a short search
   finds (largest minimum Hamming distance).
2. Each attribute takes its prototype value, or with probability `atypical` one of the other three values
   uniformly; attributes are independent given the class. Because they share the class, the modalities are
   correlated: a missing one can partly be inferred from the others.
3. Each modality reveals three attributes through a discrete channel: its "message". Image: colour, shape,
   beats. Text: taste, shape, pitch. Audio: timbre, pitch, beats. So each modality has one private attribute
   and shares one with each other modality. Per revealed attribute, the channel reports the true value with
   probability 1 - confusion, another value uniformly otherwise; text also leaves an attribute unmentioned
   with probability `text_omission` (before confusion).
4. The message is rendered into the raw signal (see `synthetic_render`): the symbols decide what is shown, the
   nuisance (position, size, hue, wording, loudness, timing, noise) how.

Assumption: the rendering is invertible, i.e. a perfect reader recovers the message from the raw signal. The
Bayes accuracy is therefore exact for the message channel, `sum over messages of max_y P(y, messages)`, and an
upper bound for any model reading the raw signal; a model can approach it, never beat it (beyond sampling error,
see `check_not_above_bayes`).

Splits: every sample has its own random streams, seeded by (seed, split, index, purpose). The splits
"train", "val", "test" and "pretrain" are thus independent streams with distinct ids, "pretrain" (for the demo
encoders) shares no sample with the benchmark splits, and regenerating any sample, alone or in any batch, gives
the same result. Latent draws and each modality's rendering use separate streams, so the two-modality variants
(a modality left out) contain exactly the same samples minus that modality.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .demo_encoders import demo_encoder_paths  # noqa: F401  (re-exported with the benchmark it was made for)
from .synthetic_render import NUM_VALUES, OMITTED, render_audio, render_image, render_text

MODALITIES = ("image", "text", "audio")
SPLITS = ("train", "val", "test", "pretrain")
CLASS_NAMES = (
    "zorble", "quimp", "flenk", "drazzle", "mupple", "twonk", "blorp", "snibbet", "wuzzle", "plonk", "grindle",
    "fizzet",
)  # fmt: skip
PROTOTYPE_CANDIDATES = 200
MAX_CLASSES = 64
"""Beyond this the prototype search slows down and prototypes come too close for a useful benchmark."""
BAYES_CHUNK_ENTRIES = 2**22
"""Entries of P(y, messages) held at once while summing the Bayes accuracy."""


@dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]
    revealed_by: tuple[str, ...]


ATTRIBUTES = (
    Attribute("colour", ("red", "green", "blue", "yellow"), ("image",)),
    Attribute("taste", ("sweet", "sour", "salty", "bitter"), ("text",)),
    Attribute("timbre", ("pure", "buzzy", "bright", "breathy"), ("audio",)),
    Attribute("shape", ("circle", "square", "triangle", "cross"), ("image", "text")),
    Attribute("pitch", ("low", "middle", "high", "very high"), ("text", "audio")),
    Attribute("beats", ("one", "two", "three", "many"), ("image", "audio")),
)
"""Shared attributes are rendered in each modality that reveals them: beats as the beep count in audio and as
the background stripe frequency in the image; pitch as the tone in audio and in words in text."""
REVEALED_COLUMNS = {m: [k for k, a in enumerate(ATTRIBUTES) if m in a.revealed_by] for m in MODALITIES}
SHOWN_PER_SAMPLE = sum(len(a.revealed_by) for a in ATTRIBUTES)


@dataclass
class SyntheticConfig:
    """Size and difficulty of the benchmark. The defaults give single-modality Bayes accuracies of about 0.7-0.75
    and 0.94 with all three modalities."""

    num_classes: int = 8
    atypical: float = 0.15
    """Probability that an attribute deviates from its class prototype."""
    image_confusion: float = 0.1
    text_confusion: float = 0.1
    audio_confusion: float = 0.1
    """Probability that a modality shows a wrong value of an attribute it reveals."""
    text_omission: float = 0.1
    """Probability that the text does not mention an attribute it reveals."""
    image_size: int = 32
    audio_seconds: float = 0.5
    sample_rate: int = 16000
    seed: int = 0
    """Draws the class prototypes and every sample (see the module docstring)."""

    def __post_init__(self):
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES}, got {self.num_classes}")
        for name in ("atypical", "image_confusion", "text_confusion", "audio_confusion", "text_omission"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if self.audio_seconds < 0.2:
            raise ValueError(f"audio_seconds must be at least 0.2, got {self.audio_seconds}")

    def confusion(self, modality: str) -> float:
        return getattr(self, f"{modality}_confusion")

    def omission(self, modality: str) -> float:
        return self.text_omission if modality == "text" else 0.0


@dataclass(frozen=True)
class Latent:
    """The discrete part of a sample: class, true attribute values, and each modality's message.

    `messages[m][j]` is the symbol modality m shows for its j-th revealed attribute (`revealed(m)[j]`): a value
    index, or `OMITTED`."""

    label: int
    attributes: tuple[int, ...]
    messages: dict[str, tuple[int, ...]]


def revealed(modality: str) -> tuple[str, ...]:
    """Names of the attributes `modality` reveals, in the order of its messages."""
    return tuple(ATTRIBUTES[k].name for k in REVEALED_COLUMNS[modality])


def binomial_tolerance(bayes: float, n: int, z: float = 3.0) -> float:
    """z binomial standard errors of an accuracy measured on n samples whose true value is `bayes`."""
    return z * math.sqrt(max(bayes * (1.0 - bayes), 1e-12) / n)


def check_not_above_bayes(accuracy: float, n: int, bayes: float, z: float = 3.0) -> bool:
    """True unless `accuracy` on n test samples exceeds the Bayes limit by more than z standard errors.

    A False means a leak (test data seen in training, labels in the inputs) or a wrong limit, not a good model."""
    return accuracy <= bayes + binomial_tolerance(bayes, n, z)


def _prototypes(num_classes: int, seed: int) -> np.ndarray:
    """Balanced class prototypes `[num_classes, len(ATTRIBUTES)]` with the largest minimum Hamming distance found."""
    rng = np.random.default_rng(seed)
    best, best_score = None, None
    for _ in range(PROTOTYPE_CANDIDATES):
        table = np.stack([rng.permutation(np.arange(num_classes) % NUM_VALUES) for _ in ATTRIBUTES], axis=1)
        distance = (table[:, None] != table[None]).sum(-1) + len(ATTRIBUTES) * np.eye(num_classes, dtype=int)
        score = (distance.min(), -(distance == distance.min()).sum())
        if best_score is None or score > best_score:
            best, best_score = table, score
    return best


class SyntheticBenchmark:
    """Samples and exact Bayes limits of the generated benchmark over `modalities` (a subset of image, text, audio)."""

    def __init__(self, config: SyntheticConfig | None = None, modalities: tuple[str, ...] = MODALITIES):
        self.config = config or SyntheticConfig()
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct names among {MODALITIES}, got {modalities}")
        self.modalities = tuple(modalities)
        self.prototypes = _prototypes(self.config.num_classes, self.config.seed)
        self.class_names = [
            CLASS_NAMES[i] if self.config.num_classes <= len(CLASS_NAMES) else f"class {i}"
            for i in range(self.config.num_classes)
        ]

    # ------------------------------------------------------------------------------------------------ sampling

    def _rng(self, split: str, index: int, purpose: int) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return np.random.default_rng([self.config.seed, SPLITS.index(split), index, purpose])

    def latent(self, split: str, index: int) -> Latent:
        """The class, attributes and messages of sample `index` of `split` (cheap: nothing is rendered)."""
        rng = self._rng(split, index, 0)
        label = int(rng.integers(self.config.num_classes))
        uniforms = iter(rng.random(len(ATTRIBUTES) + 2 * SHOWN_PER_SAMPLE).tolist())
        shifts = iter(rng.integers(1, NUM_VALUES, size=len(ATTRIBUTES) + SHOWN_PER_SAMPLE).tolist())
        attributes = [
            (value + next(shifts)) % NUM_VALUES if next(uniforms) < self.config.atypical else value
            for value in self.prototypes[label].tolist()
        ]
        messages = {}
        for modality in MODALITIES:
            omission, confusion = self.config.omission(modality), self.config.confusion(modality)
            message = []
            for k in REVEALED_COLUMNS[modality]:
                omit, confuse, shift = next(uniforms) < omission, next(uniforms) < confusion, next(shifts)
                message.append(OMITTED if omit else (attributes[k] + shift) % NUM_VALUES if confuse else attributes[k])
            messages[modality] = tuple(message)
        return Latent(label, tuple(attributes), messages)

    def render(self, modality: str, message: tuple[int, ...], rng: np.random.Generator):
        """The raw signal of one modality for its message."""
        symbols = dict(zip(revealed(modality), message))
        if modality == "image":
            return render_image(**symbols, size=self.config.image_size, rng=rng)
        if modality == "text":
            return render_text(**symbols, rng=rng)
        return render_audio(**symbols, seconds=self.config.audio_seconds, sample_rate=self.config.sample_rate, rng=rng)

    def sample(self, n: int, split: str, start: int = 0) -> list[dict]:
        """Samples `start .. start + n - 1` of `split`: `{"id", "label", <modality>: raw signal, ...}`.

        Image: an RGB `PIL.Image` of `image_size` pixels; text: a str; audio: a float32 mono waveform at
        `sample_rate`."""
        samples = []
        for index in range(start, start + n):
            latent = self.latent(split, index)
            sample = {"id": f"{split}-{index}", "label": latent.label}
            for modality in self.modalities:
                rng = self._rng(split, index, 1 + MODALITIES.index(modality))
                sample[modality] = self.render(modality, latent.messages[modality], rng)
            samples.append(sample)
        return samples

    def latent_of(self, sample: dict) -> Latent:
        """The latent state behind a sample made by `sample()` of this benchmark, found from its id."""
        split, _, index = str(sample.get("id", "")).rpartition("-")
        if split not in SPLITS or not index.isdigit():
            raise ValueError(f"sample id {sample.get('id')!r} was not made by SyntheticBenchmark.sample")
        return self.latent(split, int(index))

    def unimodal_labels(self, sample: dict, modality: str) -> tuple[int, ...]:
        """Pretraining targets of `modality`: the message it renders, one symbol per `revealed(modality)`.

        Symbols are value indices `0 .. 3` or `OMITTED` (4, text only); a reader that predicts them perfectly
        has recovered everything the modality carries."""
        return self.latent_of(sample).messages[modality]

    # ------------------------------------------------------------------------------------------ Bayes limits

    def _channel(self, modality: str) -> np.ndarray:
        """P(message symbol | true value), `[NUM_VALUES, NUM_VALUES + 1]`; the last column is OMITTED."""
        omit, confuse = self.config.omission(modality), self.config.confusion(modality)
        channel = np.full((NUM_VALUES, NUM_VALUES + 1), (1 - omit) * confuse / (NUM_VALUES - 1))
        channel[np.arange(NUM_VALUES), np.arange(NUM_VALUES)] = (1 - omit) * (1 - confuse)
        channel[:, OMITTED] = omit
        return channel

    def _observers(self, pattern: tuple[str, ...]) -> list[tuple[int, list[str]]]:
        unknown = set(pattern) - set(self.modalities)
        if unknown or not pattern:
            raise ValueError(f"a pattern must be a non-empty subset of {self.modalities}, got {pattern}")
        observed = [(k, [m for m in a.revealed_by if m in pattern]) for k, a in enumerate(ATTRIBUTES)]
        return [(k, observers) for k, observers in observed if observers]

    def _likelihoods(self, pattern: tuple[str, ...]) -> list[tuple[int, list[str], np.ndarray]]:
        """Per observed attribute: P(its joint message | y), `[num_classes, (NUM_VALUES + 1) ** observers]`.

        The joint message index is mixed-radix, the first observer (in `revealed_by` order) most significant."""
        tables = []
        for k, observers in self._observers(pattern):
            given_value = np.ones((NUM_VALUES, 1))
            for modality in observers:
                given_value = (given_value[:, :, None] * self._channel(modality)[:, None, :]).reshape(NUM_VALUES, -1)
            value_given_class = np.full((self.config.num_classes, NUM_VALUES), self.config.atypical / (NUM_VALUES - 1))
            value_given_class[np.arange(self.config.num_classes), self.prototypes[:, k]] = 1 - self.config.atypical
            tables.append((k, observers, value_given_class @ given_value))
        return tables

    def bayes_accuracy(self, pattern: tuple[str, ...]) -> float:
        """Exact Bayes-optimal accuracy when only the modalities of `pattern` are seen: sum_m max_y P(y, m).

        Attributes are independent given y and each message depends on one attribute, so P(y, m) is a product of
        per-attribute tables; the sum runs over all joint messages, a chunk of the first table at a time."""
        tables = sorted((t for _, _, t in self._likelihoods(tuple(pattern))), key=lambda t: -t.shape[1])
        rest = np.full((self.config.num_classes, 1), 1.0 / self.config.num_classes)
        for table in tables[1:]:
            rest = (rest[:, :, None] * table[:, None, :]).reshape(self.config.num_classes, -1)
        chunk = max(1, BAYES_CHUNK_ENTRIES // rest.size)
        first = tables[0]
        return float(
            sum(
                (first[:, j : j + chunk, None] * rest[:, None, :]).max(axis=0).sum()
                for j in range(0, first.shape[1], chunk)
            )
        )

    def bayes_posterior(self, latents: list[Latent], pattern: tuple[str, ...]) -> np.ndarray:
        """P(y | the messages of the modalities of `pattern`), `[len(latents), num_classes]`: the Bayes classifier."""
        log_joint = np.full((len(latents), self.config.num_classes), -math.log(self.config.num_classes))
        for k, observers, table in self._likelihoods(tuple(pattern)):
            name = ATTRIBUTES[k].name
            index = np.zeros(len(latents), dtype=int)
            for modality in observers:
                position = revealed(modality).index(name)
                index = index * (NUM_VALUES + 1) + [latent.messages[modality][position] for latent in latents]
            with np.errstate(divide="ignore"):
                log_joint += np.log(table[:, index].T)
        joint = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
        return joint / joint.sum(axis=1, keepdims=True)

    def scenarios(self) -> list[dict]:
        """Every non-empty subset of the modalities with its name and exact Bayes accuracy, complete first."""
        rows = []
        for size in range(len(self.modalities), 0, -1):
            for available in itertools.combinations(self.modalities, size):
                rows.append(
                    {
                        "name": scenario_name(available, self.modalities),
                        "available": list(available),
                        "bayes_accuracy": self.bayes_accuracy(available),
                    }
                )
        return rows


def scenario_name(available: tuple[str, ...], modalities: tuple[str, ...]) -> str:
    """"complete", "<m> missing" when one modality is absent, else "<m> only" (or "<a>+<b> only")."""
    missing = [m for m in modalities if m not in available]
    if not missing:
        return "complete"
    if len(missing) == 1:
        return f"{missing[0]} missing"
    return "+".join(available) + " only"
