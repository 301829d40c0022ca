"""`robustmm report`: the figures and tables of a paper on missing modalities, from finished runs, without training.

One self-contained HTML page (figures embedded as PNG, no script from elsewhere, no server), beside it a markdown
summary, the PNGs and every table as JSON and CSV:

- the metric against the missing rate of each modality, one line per method, ± SD over seeds (paper Fig. 2/3);
- a radar over the availability scenarios (Fig. 1b) and the scenario table, mean ± SD, best and second best
  marked, with the Bayes limit where the data has one (the demo's);
- the per-class gain of one method over another with a modality missing, sorted (Fig. 4);
- t-SNE of one run's features: complete, and with each modality missing the sum of the visible modalities'
  class features beside the fused feature the head reads (Fig. 5);
- attention of the image encoder's last layer from the class token and each token segment the method puts in
  front of it (CMPT's proxies, prompts) to the patches (Fig. 6);
- calibration per availability pattern (expected calibration error, reliability diagram): a model that is sure
  of itself with the image missing is a hazard;
- compute: trainable parameters per part, training time, seconds per 1000 predictions per scenario.

Runs are grouped by method; several runs of one method are its seeds. The parts: `loading` (the data of runs,
the demo or models in memory), `probes` (what running the models shows), `figures`, `rendering` (page, markdown,
tables; `report.css`, `check.js`).
"""

from __future__ import annotations

from pathlib import Path

from .loading import ReportData, RunResult, from_demo, from_models, from_runs, training_seconds
from .probes import attention_maps, fused_features
from .rendering import build_report, focus_method, gain_pair

__all__ = [
    "ReportData", "RunResult", "attention_maps", "build_report", "from_demo", "from_models", "from_runs",
    "fused_features", "main", "training_seconds", "write_report",
]


def write_report(runs_or_models, out_dir, samples=None, attention_ids=None, log=None,
                 gain: tuple[str, str] | None = None, focus: str | None = None) -> Path:
    """The report of run directories (a list), or of models in memory (a dict name -> model) on labelled test
    `samples`; returns the page. `attention_ids`: the run's test samples whose attention maps to show; `gain`:
    the (method, reference) pair of the per-class gain (default: cmpt over baseline where both ran, else the last
    method over the first); `focus`: the method whose t-SNE and attention are shown (default: cmpt where it ran,
    else the first). Bad choices are refused before any run is evaluated."""
    if isinstance(runs_or_models, dict):
        if samples is None:
            raise ValueError("a report of models needs their labelled test samples")
        methods = list(runs_or_models)
    else:
        from ..config import RUN_CONFIG, read_run_config

        methods = list(dict.fromkeys(read_run_config(Path(d) / RUN_CONFIG).model.method for d in runs_or_models))
    gain_pair(methods, gain)  # bad choices are refused before any run is evaluated
    focus_method(methods, focus)
    if isinstance(runs_or_models, dict):
        data = from_models(runs_or_models, samples)
    else:
        data = from_runs(runs_or_models, attention_ids=attention_ids, log=log)
    return build_report(data, out_dir, log=log, gain=gain, focus=focus)


def main(args) -> None:
    from ..evaluation import log_to_stderr

    ids = [part.strip() for part in args.attention_ids.split(",") if part.strip()] if args.attention_ids else None
    gain = tuple(part.strip() for part in args.gain.split(",")) if args.gain else None
    path = write_report(args.run_dirs, args.out, attention_ids=ids, log=log_to_stderr, gain=gain, focus=args.focus)
    print(f"wrote {path}, {Path(args.out) / 'report.md'}, figures/ and tables/")
