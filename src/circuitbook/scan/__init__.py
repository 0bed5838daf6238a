"""Scan stage: stream a corpus through the model and record, for every MLP neuron and attention head,
top examples, quantile-band samples, histograms and statistics into the book (see run.py).

    from circuitbook.scan import scan_corpus
    summary = scan_corpus(model, "stories.txt", "book.db", k=32, max_tokens=1_000_000)
"""

from .merge import merge_books
from .run import ScanError, ScanSettings, ScanState, ScanSummary, scan_corpus

__all__ = ["scan_corpus", "merge_books", "ScanSettings", "ScanSummary", "ScanState", "ScanError"]
