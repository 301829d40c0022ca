"""How many cores this process may use, and how to split them between jobs that run side by side (the demo's
training processes, a sweep's local workers)."""

from __future__ import annotations

import os


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def job_threads(jobs: int, workers: int, cores: int) -> list[int]:
    """Threads of each job: the cores split evenly between the workers, except in the last, partial round (9
    runs on 2 workers: the 9th runs alone), whose runs share the cores that the idle workers leave. A job's
    thread count depends only on its place in the list, so a demo gives the same figures every time."""
    threads = [max(1, cores // workers)] * jobs
    last_round = jobs % workers
    for index in range(jobs - last_round, jobs):
        threads[index] = max(1, cores // last_round)
    return threads
