"""pystream: an embeddable event-time stream processor with a native hot path.

>>> import pystream as ps
>>> flow = ps.Flow("meters")
"""

from . import agg, sinks, sources, windows
from ._duration import parse_duration
from .batch import Batch
from .flow import Flow, KeyedStream, RunResult, Stream, WindowedStream, WindowResultStream
from .operators import WindowAggregateOperator
from .timing import EventTime

__version__ = "0.1.0"

__all__ = [
    "Batch", "EventTime", "Flow", "KeyedStream", "RunResult", "Stream", "WindowAggregateOperator",
    "WindowResultStream", "WindowedStream", "agg", "parse_duration", "sinks", "sources", "windows",
]
