"""A fake SLURM on PATH for the sweep's slurm executor: `sbatch`, `srun`, `sacct`, `scancel` and `scontrol` as small
scripts, so that submitit's real SLURM executor submits, watches and collects a job array on one machine.

`sbatch SCRIPT` records the script (STATE/<job>.sbatch), prints "Submitted batch job <job>" and starts, detached,
a runner that runs the script once per array task (`#SBATCH --array=0-N%P`, at most P at a time) with the
environment SLURM gives a task (SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID, SLURM_NTASKS, ...) and its `--output`
and `--error` files. `srun` runs its command as task 0 with the same file patterns; `sacct` reports each task's
state from STATE/<job>_<task>.state; `scancel` ends a job's runner and tasks; `scontrol requeue` is recorded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMMON = r'''
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
STATE = Path(os.environ["FAKE_SLURM_STATE"])


def expand(pattern, task):
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ["SLURM_JOB_ID"]
    index = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    return (pattern.replace("%A", job).replace("%a", index).replace("%j", os.environ["SLURM_JOB_ID"])
            .replace("%t", str(task)))
'''

SBATCH = COMMON + r'''
script = Path(sys.argv[-1])
text = script.read_text()
STATE.mkdir(parents=True, exist_ok=True)
counter = STATE / "next_id"
job = int(counter.read_text()) if counter.exists() else 1000
counter.write_text(str(job + 1))
(STATE / f"{job}.sbatch").write_text(text)
found = re.search(r"^#SBATCH --array=(\d+)-(\d+)%(\d+)$", text, re.M)
tasks = list(range(int(found[1]), int(found[2]) + 1)) if found else [None]
for task in tasks:
    (STATE / (f"{job}_{task}.state" if task is not None else f"{job}.state")).write_text("PENDING")
runner = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_slurm_runner")), str(job),
                           str(script), json.dumps(tasks), found[3] if found else "1"],
                          start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
(STATE / f"{job}.pid").write_text(str(runner.pid))
print(f"Submitted batch job {job}")
'''

RUNNER = COMMON + r'''
job, script, tasks, parallel = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
text = Path(script).read_text()
option = lambda name: (re.search(rf"^#SBATCH --{name}=(.*)$", text, re.M) or [None, None])[1]
running = {}


def start(task):
    env = {**os.environ, "SLURM_JOB_ID": job if task is None else str(int(job) * 1000 + task), "SLURM_NTASKS": "1",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost",
           "SLURM_JOB_NAME": option("job-name") or "fake", "SLURM_SUBMIT_DIR": os.getcwd()}
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(task))
    os.environ.update(env)
    out = open(expand(option("output").strip("'"), 0), "a")
    err = open(expand(option("error").strip("'"), 0), "a")
    name = f"{job}_{task}" if task is not None else job
    (STATE / f"{name}.state").write_text("RUNNING")
    return name, subprocess.Popen(["bash", script], env=env, stdout=out, stderr=err)


queue = list(tasks)
while queue or running:
    while queue and len(running) < parallel:
        name, process = start(queue.pop(0))
        running[name] = process
    for name, process in list(running.items()):
        if process.poll() is not None:
            (STATE / f"{name}.state").write_text("COMPLETED" if process.returncode == 0 else "FAILED")
            del running[name]
    time.sleep(0.2)
'''

SRUN = COMMON + r'''
arguments = sys.argv[1:]
files = {}
while arguments and arguments[0].startswith("--"):
    flag = arguments.pop(0)
    if flag in ("--output", "--error"):
        files[flag] = arguments.pop(0)
os.environ.update(SLURM_PROCID="0", SLURM_LOCALID="0")
out = open(expand(files["--output"], 0), "a") if "--output" in files else None
err = open(expand(files["--error"], 0), "a") if "--error" in files else None
sys.exit(subprocess.call(arguments, stdout=out, stderr=err))
'''

SACCT = COMMON + r'''
jobs = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for job in jobs:
    for state in sorted(STATE.glob(f"{job}*.state")):
        print(f"{state.stem}|{state.read_text()}|localhost")
'''

SCANCEL = COMMON + r'''
for job in [a for a in sys.argv[1:] if not a.startswith("-")]:
    main = job.split("_")[0]
    (STATE / "cancelled").open("a").write(job + "\n")
    pid = STATE / f"{main}.pid"
    if pid.exists():
        try:
            os.killpg(int(pid.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
'''

SCONTROL = COMMON + r'''
(STATE / "scontrol").open("a").write(" ".join(sys.argv[1:]) + "\n")
'''


def install_fake_slurm(folder: Path) -> tuple[Path, Path]:
    """Write the fake commands into folder/bin; returns (bin, state folder)."""
    bin_dir, state = folder / "bin", folder / "state"
    bin_dir.mkdir(parents=True, exist_ok=True)
    scripts = {"sbatch": SBATCH, "fake_slurm_runner": RUNNER, "srun": SRUN, "sacct": SACCT, "scancel": SCANCEL,
               "scontrol": SCONTROL}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    return bin_dir, state


def fake_slurm_env(folder: Path) -> dict:
    bin_dir, state = install_fake_slurm(folder)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_STATE": str(state)}
