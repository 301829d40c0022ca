import itertools

import numpy as np
import pytest
from PIL import Image

from robustmm.data.synthetic import (
    ATTRIBUTES,
    MODALITIES,
    SyntheticBenchmark,
    SyntheticConfig,
    binomial_tolerance,
    check_not_above_bayes,
    revealed,
)
from robustmm.data.synthetic_render import NUM_VALUES, OMITTED

MONTE_CARLO_SAMPLES = 10000
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(MODALITIES, r)]


@pytest.fixture(scope="module")
def benchmark():
    return SyntheticBenchmark()


def as_comparable(sample: dict) -> tuple:
    return (sample["id"], sample["label"], sample["image"].tobytes(), sample["text"], sample["audio"].tobytes())


def test_sample_format(benchmark):
    config = benchmark.config
    for sample in benchmark.sample(5, "train"):
        assert set(sample) == {"id", "label", "image", "text", "audio"}
        assert 0 <= sample["label"] < config.num_classes
        assert isinstance(sample["image"], Image.Image) and sample["image"].mode == "RGB"
        assert sample["image"].size == (config.image_size, config.image_size)
        assert isinstance(sample["text"], str) and sample["text"]
        audio = sample["audio"]
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert len(audio) == round(config.audio_seconds * config.sample_rate) and np.abs(audio).max() <= 1
    assert len(benchmark.class_names) == config.num_classes == len(set(benchmark.class_names))


def test_deterministic_per_seed_and_split(benchmark):
    again = SyntheticBenchmark(SyntheticConfig())
    first = [as_comparable(s) for s in benchmark.sample(6, "val")]
    assert first == [as_comparable(s) for s in again.sample(6, "val")]
    assert first[2:] == [as_comparable(s) for s in again.sample(4, "val", start=2)]
    other_seed = SyntheticBenchmark(SyntheticConfig(seed=1)).sample(6, "val")
    assert all(a[2] != b["image"].tobytes() for a, b in zip(first, other_seed))


def test_splits_are_disjoint_streams(benchmark):
    splits = {split: benchmark.sample(30, split) for split in ("train", "val", "test", "pretrain")}
    ids = [s["id"] for samples in splits.values() for s in samples]
    audio = {s["audio"].tobytes() for samples in splits.values() for s in samples}
    images = {s["image"].tobytes() for samples in splits.values() for s in samples}
    assert len(set(ids)) == len(ids) == len(audio) == len(images)
    labels = {split: [s["label"] for s in samples] for split, samples in splits.items()}
    assert len({tuple(v) for v in labels.values()}) == len(labels)
    with pytest.raises(ValueError, match="unknown split"):
        benchmark.sample(1, "dev")


def test_modality_subsets_share_samples(benchmark):
    full = benchmark.sample(4, "test")
    pair = SyntheticBenchmark(modalities=("audio", "image")).sample(4, "test")
    for a, b in zip(full, pair):
        assert set(b) == {"id", "label", "audio", "image"}
        assert a["label"] == b["label"] and a["image"].tobytes() == b["image"].tobytes()
        assert np.array_equal(a["audio"], b["audio"])


def test_text_wording_varies_for_one_message():
    benchmark = SyntheticBenchmark(modalities=("text",))
    by_message = {}
    for sample in benchmark.sample(300, "train"):
        by_message.setdefault(benchmark.unimodal_labels(sample, "text"), set()).add(sample["text"])
    most = max(by_message.values(), key=len)
    assert len(most) >= 5


def test_unimodal_labels_are_the_messages(benchmark):
    sample = benchmark.sample(1, "pretrain", start=7)[0]
    latent = benchmark.latent("pretrain", 7)
    for modality in MODALITIES:
        labels = benchmark.unimodal_labels(sample, modality)
        assert labels == latent.messages[modality] and len(labels) == len(revealed(modality))
        assert all(0 <= symbol <= OMITTED for symbol in labels)
    with pytest.raises(ValueError, match="not made by"):
        benchmark.unimodal_labels({"id": "x"}, "image")


def test_every_attribute_revealed_by_one_or_two_modalities():
    assert {m for a in ATTRIBUTES for m in a.revealed_by} == set(MODALITIES)
    assert all(1 <= len(a.revealed_by) <= 2 for a in ATTRIBUTES)
    for a, b in itertools.combinations(MODALITIES, 2):
        assert set(revealed(a)) & set(revealed(b)), f"{a} and {b} share no attribute"


def test_bayes_accuracy_is_monotone_and_bounded(benchmark):
    chance = 1 / benchmark.config.num_classes
    bayes = {s: benchmark.bayes_accuracy(s) for s in SUBSETS}
    for smaller, larger in itertools.combinations(SUBSETS, 2):
        if set(smaller) < set(larger):
            assert bayes[smaller] <= bayes[larger] + 1e-12
    assert all(chance < value <= 1 for value in bayes.values())
    complete = bayes[MODALITIES]
    assert complete > 0.9
    for modality in MODALITIES:
        alone = bayes[(modality,)]
        assert chance + 0.3 < alone < complete - 0.1, f"{modality} alone: {alone}"


def test_scenarios_names():
    names = [s["name"] for s in SyntheticBenchmark().scenarios()]
    assert names == [
        "complete", "audio missing", "text missing", "image missing", "image only", "text only", "audio only"
    ]  # fmt: skip
    pair = SyntheticBenchmark(modalities=("image", "text")).scenarios()
    assert [s["name"] for s in pair] == ["complete", "text missing", "image missing"]
    assert [s["available"] for s in pair] == [["image", "text"], ["image"], ["text"]]
    with pytest.raises(ValueError):
        SyntheticBenchmark(modalities=("image", "text")).bayes_accuracy(("audio",))


def brute_force_bayes(benchmark: SyntheticBenchmark, modality: str) -> float:
    """sum_m max_y P(y, m) by enumerating every class, attribute value and message of one modality."""
    config, columns = benchmark.config, [k for k, a in enumerate(ATTRIBUTES) if modality in a.revealed_by]
    omission, confusion = config.omission(modality), config.confusion(modality)

    def p_value(value, y, k):
        return 1 - config.atypical if value == benchmark.prototypes[y, k] else config.atypical / (NUM_VALUES - 1)

    def p_symbol(symbol, value):
        if symbol == OMITTED:
            return omission
        return (1 - omission) * (1 - confusion if symbol == value else confusion / (NUM_VALUES - 1))

    total = 0.0
    for message in itertools.product(range(NUM_VALUES + 1), repeat=len(columns)):
        joint = []
        for y in range(config.num_classes):
            p = 1 / config.num_classes
            for k, symbol in zip(columns, message):
                p *= sum(p_value(v, y, k) * p_symbol(symbol, v) for v in range(NUM_VALUES))
            joint.append(p)
        total += max(joint)
    return total


@pytest.mark.parametrize("modality", ["image", "text"])
def test_bayes_accuracy_matches_brute_force(modality):
    benchmark = SyntheticBenchmark(SyntheticConfig(num_classes=5, seed=3, text_omission=0.2))
    assert benchmark.bayes_accuracy((modality,)) == pytest.approx(brute_force_bayes(benchmark, modality), abs=1e-12)


def test_bayes_classifier_on_sampled_messages_attains_the_exact_limit(benchmark):
    """Monte Carlo: the Bayes classifier on drawn messages scores the exact value within 4 binomial SE,
    and so never beats it beyond sampling error."""
    latents = [benchmark.latent("test", i) for i in range(MONTE_CARLO_SAMPLES)]
    labels = np.array([latent.label for latent in latents])
    for available in SUBSETS:
        exact = benchmark.bayes_accuracy(available)
        posterior = benchmark.bayes_posterior(latents, available)
        assert np.allclose(posterior.sum(axis=1), 1)
        accuracy = float((posterior.argmax(axis=1) == labels).mean())
        assert abs(accuracy - exact) <= binomial_tolerance(exact, MONTE_CARLO_SAMPLES, z=4), available
        assert check_not_above_bayes(accuracy, MONTE_CARLO_SAMPLES, exact)


def test_check_not_above_bayes():
    se = binomial_tolerance(0.8, 1000, z=1)
    assert check_not_above_bayes(0.8 + 2 * se, 1000, 0.8)
    assert not check_not_above_bayes(0.8 + 4 * se, 1000, 0.8)
    assert check_not_above_bayes(0.5, 1000, 0.8)


# -- the `synthetic` dataset: the benchmark as a reader that configs and sweeps name ----------------------------

SMALL = dict(train_size=6, val_size=14, test_size=5)


def test_the_synthetic_dataset_reads_exactly_the_samples_the_demo_renders(tmp_path):
    from robustmm.data import get_dataset
    from robustmm.data.datasets.synthetic import mixed_availability

    benchmark = SyntheticBenchmark(SyntheticConfig(), modalities=MODALITIES)
    scenarios = benchmark.scenarios()
    rendered = {split: benchmark.sample(SMALL[f"{split}_size"], split) for split in ("train", "val", "test")}
    rendered["val"] = [{k: None if k in MODALITIES and k not in mixed_availability(i, scenarios) else v
                        for k, v in sample.items()} for i, sample in enumerate(rendered["val"])]
    for split in ("train", "val", "test"):
        dataset = get_dataset("synthetic", tmp_path, split, modalities="image,text,audio", **SMALL)
        assert dataset.class_names == tuple(benchmark.class_names)
        for ours, theirs in zip([dataset[i] for i in range(len(dataset))], rendered[split], strict=True):
            assert (ours["id"], ours["label"], ours["text"]) == (theirs["id"], theirs["label"], theirs["text"])
            for modality in ("image", "audio"):  # PNG and float32 .npy: lossless; None where validation lacks it
                if theirs[modality] is None:
                    assert ours[modality] is None
                else:
                    assert np.asarray(ours[modality]).tobytes() == np.asarray(theirs[modality]).tobytes()
    availability = get_dataset("synthetic", tmp_path, "val", modalities="image,text,audio", **SMALL).present_table()
    assert len({tuple(row) for row in availability.tolist()}) == 7  # every availability pattern in validation


def test_the_rendered_copy_is_keyed_by_every_setting_and_reused_as_is(tmp_path):
    from robustmm.data import get_dataset

    first = get_dataset("synthetic", tmp_path, "test", **SMALL).root
    stamp = (first / "test.jsonl").stat().st_mtime_ns
    assert get_dataset("synthetic", tmp_path, "train", **SMALL).root == first
    assert (first / "test.jsonl").stat().st_mtime_ns == stamp  # read, not rendered again
    others = [dict(SMALL, seed=1), dict(SMALL, test_size=6), dict(SMALL, val_patterns="complete"),
              dict(SMALL, atypical=0.2), dict(SMALL, modalities=["image", "audio"])]
    roots = {get_dataset("synthetic", tmp_path, "test", **options).root for options in others}
    assert len(roots) == len(others) and first not in roots
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in roots | {first})  # no scratch left
    assert get_dataset("synthetic", tmp_path, "val", **dict(SMALL, val_patterns="complete")).present_table().all()
    with pytest.raises(ValueError, match="val_patterns must be one of mixed, complete, got 'some'"):
        get_dataset("synthetic", tmp_path, "val", val_patterns="some")
    with pytest.raises(ValueError, match="train_size must be a positive integer, got 0"):
        get_dataset("synthetic", tmp_path, "val", **dict(SMALL, train_size=0))
