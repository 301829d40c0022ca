"""`robustmm serve` without the model: the same server (the Gate middleware, LitServe's API server, queues,
batching and worker) with an API whose worker answers every row with a fixed record, decoding no media and running
no model. Its rows/s under load is the ceiling that HTTP, JSON and LitServe leave on this machine; its CPU per row
is the server's own cost, which the model's adds to (BENCHMARKS.md, "Serving").

    python scripts/serve_floor.py RUN_DIR --port 8000 [--max-batch-size 32] [--batch-timeout-ms 10]
"""

from __future__ import annotations

import argparse

import robustmm.serve as serving


class NoModelAPI(serving.ModelAPI):
    """Answers each row with the same record, in the request's order, as the real API does."""

    def setup(self, device):
        serving.end_with_parent(self.parent)

    def decode_request(self, request):
        return request["rows"]

    def predict(self, requests):
        requests = [requests] if self.max_batch_size == 1 else requests
        answers = [([{"id": row.get("id"), "modalities": "", "prediction": "-", "probabilities": {}}
                     for row in rows], len(requests)) for rows in requests]
        return answers[0] if self.max_batch_size == 1 else answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory or saved model: its modalities make the request checks")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=10)
    args = parser.parse_args()
    serving.ModelAPI = NoModelAPI  # what build_server builds; the spawned worker finds it in this module
    serving.serve(args.run, port=args.port, max_batch_size=args.max_batch_size,
                  batch_timeout_ms=args.batch_timeout_ms)


if __name__ == "__main__":
    main()
