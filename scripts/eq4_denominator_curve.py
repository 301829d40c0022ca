"""Why eq. 4 as written (`align_denominator="paper"`) collapses when the encoders' features are of one scale.

Trains CMPT on the demo's data once per denominator and records, at every training step, on the batch: the
paper's denominator D = MSE(P_image->text, C_image); the task loss and the weighted alignment loss
lambda * L_align of eq. 7; the spread of the image's class feature C_image (the standard deviation over the batch
of each dimension, averaged: how much the class feature still tells samples apart); and the cross-modal error
N2 = MSE(P_text->image, C_image). Writes the curves (JSON and PNG) and prints the accuracy per scenario.

    .venv/bin/python scripts/eq4_denominator_curve.py --out results/eq4-denominator   # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def demo_data(config) -> dict:
    """The demo's splits in memory (the `synthetic` dataset's samples): validation cycling through every
    availability pattern, as the demo selects its model."""
    from robustmm.data.datasets.synthetic import mixed_availability
    from robustmm.demo import benchmark_of

    benchmark = benchmark_of(config)
    scenarios = benchmark.scenarios()
    val = [{k: (None if k in config.modalities and k not in mixed_availability(i, scenarios) else v)
            for k, v in sample.items()} for i, sample in enumerate(benchmark.sample(config.val_size, "val"))]
    return {"train": benchmark.sample(config.train_size, "train"), "val": val,
            "test": benchmark.sample(config.test_size, "test"), "scenarios": scenarios,
            "class_names": list(benchmark.class_names)}


def train_and_score(config, data, method: str, seed: int, callbacks) -> dict[str, float]:
    """Train one model as a demo run does (no run directory) and its accuracy in every scenario."""
    import tempfile

    import torch

    from robustmm.data.synthetic import demo_encoder_paths
    from robustmm.demo import options_for
    from robustmm.metrics import compute_metrics
    from robustmm.registry import build_model
    from robustmm.training import TrainConfig, scenario_logits, train

    paths = demo_encoder_paths()
    model = build_model(method, encoders={m: paths[m] for m in config.modalities},
                        num_classes=len(data["class_names"]), class_names=data["class_names"], seed=seed,
                        **options_for(config.options, method))
    train_config = TrainConfig(epochs=config.epochs, warmup_epochs=config.warmup_epochs, batch_size=config.batch_size,
                               lr=config.lr, seed=seed, precision=config.precision, group_by_length=True,
                               progress_bar=False)
    with tempfile.TemporaryDirectory(prefix="robustmm-eq4-") as checkpoints:
        train(model, data["train"], data["val"], train_config, out_dir=checkpoints, callbacks=callbacks)
    size = len(data["test"])
    masks = {s["name"]: {m: torch.full((size,), m in s["available"]) for m in config.modalities}
             for s in data["scenarios"]}
    logits, labels = scenario_logits(model, data["test"], masks, batch_size=64, precision=config.precision)
    return {name: compute_metrics(logits[name], labels, multilabel=False)["accuracy"] for name in masks}


def run(denominator: str, data, config) -> dict:
    """Train CMPT with `denominator` as the demo does (seed 0), recording eq. 4's terms at every step."""
    import lightning as L

    from robustmm.methods.cmpt import mse

    curve = {"D": [], "N2": [], "task": [], "weighted_align": [], "image_spread": []}
    captured = {}

    class Recorder(L.Callback):
        def on_fit_start(self, trainer, module):
            module.model.register_forward_hook(lambda model, args, output: captured.update(output=output))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
            out = captured["output"]
            both = out.present["image"] & out.present["text"]
            for key, value in (
                ("D", mse(out.features.extras["proxies"]["image", "text"], out.features.cls["image"])[both].mean()),
                ("N2", mse(out.features.extras["proxies"]["text", "image"], out.features.cls["image"])[both].mean()),
                ("task", out.task_loss),
                ("weighted_align", out.loss_weights["align"] * out.losses["align"]),
                ("image_spread", out.features.cls["image"][both].std(0).mean()),
            ):
                curve[key].append(float(value.detach()))

    config.options = {"cmpt.align_denominator": denominator}
    return {"curve": curve, "accuracy": train_and_score(config, data, "cmpt", 0, [Recorder()])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/eq4-denominator"))
    parser.add_argument("--denominators", nargs="+", default=["paper", "none"])
    args = parser.parse_args()

    from robustmm.console import quiet_libraries
    from robustmm.demo import DemoConfig
    from robustmm.precision import resolve_precision

    quiet_libraries()
    config = DemoConfig(methods=["cmpt"], seeds=[0])
    config.precision = resolve_precision(config.precision)
    data = demo_data(config)
    results = {d: run(d, data, config) for d in args.denominators}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(results, indent=1))
    for denominator, result in results.items():
        print(denominator, json.dumps({k: round(v, 3) for k, v in result["accuracy"].items()}))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for (denominator, result), colour in zip(results.items(), ("tab:blue", "tab:orange", "tab:green")):
        curve = result["curve"]
        axes[0].plot(curve["D"], color=colour, label=denominator)
        axes[1].plot(curve["weighted_align"], color=colour, label=f"{denominator}: λ·L_align")
        axes[1].plot(curve["task"], color=colour, linestyle=":", label=f"{denominator}: task loss")
        axes[2].plot(curve["image_spread"], color=colour, label=denominator)
        axes[3].plot(curve["N2"], color=colour, label=denominator)
    titles = ("D = MSE(P_img→txt, C_img), the paper's denominator", "eq. 7: the two losses",
              "spread of C_img over the batch", "N2 = MSE(P_txt→img, C_img)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(args.out / "curves.png", dpi=110)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
