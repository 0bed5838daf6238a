"""Where shard jobs run: a registry of executors, each running a list of worker specs (scale/worker.py) and
reporting, per spec, None (finished) or why it failed. Retries and the merge are the coordinator's
(scale/scan.py); an executor only runs what it is given, once.

    ex = make_executor("local", ExecutorOptions(workers=2)); ex.start(); errs = ex.run(specs); ex.close()

* ``local`` — one ``python -m circuitbook.scale.worker`` process per shard, ``workers`` at a time;
* ``ray`` — one Ray task per shard (``ray_address``: a running cluster; default: a local Ray started for
  the run with this machine's CPUs, or ``cpus``), Ray's own retries off;
* ``slurm`` — a Slurm job array through submitit (``slurm_partition``, ``slurm_time`` minutes, ``slurm_mem``
  GB, ``slurm_cpus`` per task); ``slurm_local`` (or ``CIRCUITBOOK_SLURM_LOCAL=1``) runs the same array with
  submitit's LocalExecutor on this machine (what the tests use).

The engines are optional extras (``pip install 'circuitbook[ray]'`` / ``'circuitbook[slurm]'``), imported
only when their executor starts; a missing one is one ScaleError naming the extra.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import CircuitbookError

SLURM_LOCAL_ENV = "CIRCUITBOOK_SLURM_LOCAL"


class ScaleError(CircuitbookError, RuntimeError):
    """A scaled-out run cannot go on (an engine missing or unreachable, shard books that do not fit, shards
    that kept failing). Finished shard books are always kept."""


@dataclasses.dataclass
class ExecutorOptions:
    workers: int | None = None  # local: processes at once (default: min(shards, CPUs))
    cpus: int | None = None  # ray: CPUs of the local Ray started for the run (default: os.cpu_count())
    ray_address: str | None = None
    slurm_partition: str | None = None
    slurm_time: int = 60  # minutes per shard job
    slurm_mem: float | None = None  # GB per shard job
    slurm_cpus: int = 4
    slurm_local: bool = False
    folder: Path | None = None  # where executors keep specs and logs (the shards directory)


EXECUTORS: dict[str, Callable[[ExecutorOptions], "Executor"]] = {}


def register_executor(name: str):
    """Class decorator: register an executor under ``name``; a name registered twice is a ScaleError."""
    def deco(cls):
        if name in EXECUTORS:
            raise ScaleError(f"an executor named {name!r} is already registered ({EXECUTORS[name].__name__})")
        EXECUTORS[name] = cls
        cls.name = name
        return cls

    return deco


def make_executor(name: str, opts: ExecutorOptions) -> "Executor":
    if name not in EXECUTORS:
        raise ScaleError(f"unknown executor {name!r} (choose from {', '.join(sorted(EXECUTORS))})")
    return EXECUTORS[name](opts)


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScaleError(f"--executor {extra} needs the '{module}' package: pip install 'circuitbook[{extra}]'") from None


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[-400:]}" if text else type(e).__name__


class Executor:
    name = "?"

    def __init__(self, opts: ExecutorOptions):
        self.opts = opts

    def start(self) -> None:
        """Connect to / start the engine (errors here are ScaleErrors, before any shard runs)."""

    def threads(self, n_jobs: int) -> int:
        """torch threads per shard job."""
        return 1

    def run(self, specs: list[dict]) -> list[str | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine."""


@register_executor("local")
class LocalExecutor(Executor):
    def _workers(self, n_jobs: int) -> int:
        return max(1, min(n_jobs, self.opts.workers or os.cpu_count() or 1))

    def threads(self, n_jobs: int) -> int:
        return max(1, (os.cpu_count() or 1) // self._workers(n_jobs))

    def run(self, specs: list[dict]) -> list[str | None]:
        folder = Path(self.opts.folder)
        todo = list(enumerate(specs))
        running: dict[int, tuple[subprocess.Popen, Path, object]] = {}
        errs: list[str | None] = [None] * len(specs)
        width = self._workers(len(specs))
        try:
            while todo or running:
                while todo and len(running) < width:
                    k, spec = todo.pop(0)
                    i = spec["shard"][0]
                    sp, log = folder / f"shard-{i}.spec.json", folder / f"shard-{i}.log"
                    sp.write_text(json.dumps(spec))
                    fh = open(log, "ab")
                    proc = subprocess.Popen([sys.executable, "-m", "circuitbook.scale.worker", str(sp)],
                                            stdout=fh, stderr=subprocess.STDOUT)
                    running[k] = (proc, log, fh)
                for k, (proc, log, fh) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    fh.close()
                    del running[k]
                    if rc != 0:
                        errs[k] = _exit_reason(rc, log)
                time.sleep(0.05)
        finally:
            for proc, _, fh in running.values():  # interrupted: stop our workers (their checkpoints stay)
                proc.send_signal(signal.SIGINT)
                proc.wait()
                fh.close()
        return errs


def _exit_reason(rc: int, log: Path) -> str:
    what = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return what + (f" ({lines[-1].strip()[-300:]}; log {log})" if lines else "")


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a Ray address whose host:port does not accept connections (ray.init would wait for minutes)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ScaleError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ScaleError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


@register_executor("ray")
class RayExecutor(Executor):
    started = False

    def start(self) -> None:
        ray = _need("ray", "ray")
        env = {"env_vars": {k: os.environ[k] for k in ("PYTHONPATH", "CIRCUITBOOK_SCALE_KILL",
                                                      "CIRCUITBOOK_CACHE_DIR") if k in os.environ}}
        if self.opts.ray_address:
            _reachable(self.opts.ray_address)
        kw = dict(include_dashboard=False, log_to_driver=False, runtime_env=env, configure_logging=False)
        try:
            if self.opts.ray_address:
                ray.init(address=self.opts.ray_address, **kw)
            else:
                ray.init(num_cpus=self.opts.cpus or os.cpu_count(), **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = self.opts.ray_address or "a local Ray"
            raise ScaleError(f"cannot start Ray ({where}): {_why(e)}") from None
        self.started = True

    def run(self, specs: list[dict]) -> list[str | None]:
        import ray

        from .worker import run_shard

        task = ray.remote(num_cpus=1, max_retries=0)(run_shard)
        refs = [task.remote(s) for s in specs]
        errs: list[str | None] = []
        for ref in refs:
            try:
                ray.get(ref)
                errs.append(None)
            except Exception as e:  # a crashed worker (WorkerCrashedError), a task's exception (RayTaskError)
                errs.append(_why(e))
        return errs

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


@register_executor("slurm")
class SlurmExecutor(Executor):
    def _local(self) -> bool:
        return self.opts.slurm_local or os.environ.get(SLURM_LOCAL_ENV, "") not in ("", "0")

    def start(self) -> None:
        submitit = _need("submitit", "slurm")
        folder = Path(self.opts.folder) / "submitit"
        if self._local():
            self.ex = submitit.LocalExecutor(folder=folder)
            self.ex.update_parameters(timeout_min=self.opts.slurm_time)
            return
        self.ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = dict(timeout_min=self.opts.slurm_time, cpus_per_task=self.opts.slurm_cpus, nodes=1,
                      tasks_per_node=1, name="circuitbook-scan")
        if self.opts.slurm_partition:
            params["slurm_partition"] = self.opts.slurm_partition
        if self.opts.slurm_mem:
            params["mem_gb"] = self.opts.slurm_mem
        self.ex.update_parameters(**params)

    def threads(self, n_jobs: int) -> int:
        return 1 if self._local() else self.opts.slurm_cpus

    def run(self, specs: list[dict]) -> list[str | None]:
        from .worker import run_shard

        try:
            jobs = self.ex.map_array(run_shard, specs)
        except Exception as e:  # sbatch missing or refusing the array
            raise ScaleError(f"could not submit the Slurm job array: {_why(e)}") from None
        errs: list[str | None] = []
        for job in jobs:
            try:
                job.result()
                errs.append(None)
            except Exception as e:  # a killed job (UncompletedJobError), a failed one (FailedJobError)
                errs.append(f"job {job.job_id}: {_why(e)}")
        return errs
