"""Extraction as a Python API: :func:`extract` (in memory, or written exactly as ``dinov3 extract`` writes it).

Modules: ``api`` (:func:`extract`, :func:`run_job`: the whole written job the command runs), ``options`` (defaults,
parsing, the checks before any work, the cheap request identity), ``engine`` (resume, decode, batch, compute, hand
to the sink), ``runners`` (the model calls, progress), ``sinks`` (where results go: :class:`Sink`,
:class:`FileSink`), ``shard_sink`` (:class:`ShardSink`: ``format="shards"``), ``model`` (building the model, its weights digest), ``dist`` (device, torchrun),
``settings`` (what decides an output's content), ``results`` (:class:`ExtractionResult`, :class:`ExtractionReport`).
Nothing here imports torch at import time.
"""

from __future__ import annotations

from .api import extract, run_job
from .errors import ExtractionError
from .results import ExtractionReport, ExtractionResult
from .shard_sink import ShardSink
from .sinks import FileSink, Sink, Stored

__all__ = [
    "ExtractionError",
    "ExtractionReport",
    "ExtractionResult",
    "FileSink",
    "ShardSink",
    "Sink",
    "Stored",
    "extract",
    "run_job",
]
