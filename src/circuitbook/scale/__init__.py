"""Scale-out: run corpus-wide work as shard jobs on an existing engine (local processes, Ray, Slurm via
submitit), retry failed shards, and merge them exactly (see scan.py for the scan, executors.py for the
engines, worker.py for what one shard job does).

    from circuitbook.scale import scale_scan, ExecutorOptions
    scale_scan(model, {"model": path, "dtype": "fp32", "device": "cpu"}, corpus, "book.db", settings,
               shards=4, executor="ray")
"""

from .executors import EXECUTORS, ExecutorOptions, ScaleError, make_executor, register_executor
from .scan import ScaleSummary, scale_scan, shard_book, shards_dir

__all__ = ["scale_scan", "ScaleSummary", "ExecutorOptions", "ScaleError", "EXECUTORS", "make_executor",
           "register_executor", "shard_book", "shards_dir"]
