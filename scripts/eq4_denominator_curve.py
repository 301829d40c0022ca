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


def run(denominator: str, data, config) -> dict:
    """Train CMPT with `denominator` as the demo does (seed 0), recording eq. 4's terms at every step."""
    import lightning as L

    from robustmm.demo import train_and_score
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
    rows = train_and_score(config, data, "cmpt", 0, lambda steps: None, callbacks=[Recorder()])
    return {"curve": curve, "accuracy": {row["scenario"]: row["accuracy"] for row in rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/eq4-denominator"))
    parser.add_argument("--denominators", nargs="+", default=["paper", "none"])
    args = parser.parse_args()

    from robustmm.console import quiet_libraries
    from robustmm.demo import DemoConfig, make_data
    from robustmm.precision import resolve_precision

    quiet_libraries()
    config = DemoConfig(methods=["cmpt"], seeds=[0])
    config.precision = resolve_precision(config.precision)
    data = make_data(config)
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
