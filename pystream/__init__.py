"""pystream: an embeddable event-time stream processor with a native hot path.

>>> import pystream as ps
>>> flow = ps.Flow("meters")
"""

from . import agg, meters, runtimes, sinks, sources, testing, triggers, tz, windows
from ._duration import parse_duration
from .batch import Batch
from .flow import Flow, KeyedStream, ResourceLimitError, RunResult, Stream, WindowedStream, WindowResultStream
from .operators import WindowAggregateOperator
from .timing import EventTime, IngestionTime, ProcessingTime

__version__ = "0.1.0"

__all__ = [
    "Batch", "EventTime", "Flow", "IngestionTime", "ProcessingTime", "KeyedStream", "ResourceLimitError", "RunResult",
    "Stream", "WindowAggregateOperator",
    "WindowResultStream", "WindowedStream", "agg", "parse_duration", "meters", "runtimes", "sinks", "sources", "testing", "triggers", "tz", "windows",
]
