"""Sources: where batches come from."""

from __future__ import annotations

from typing import Iterator

from .batch import Batch


class Source:
    """A source yields Batches. Bounded sources end; the runtime then flushes all windows."""

    name = "source"

    def batches(self) -> Iterator[Batch]:  # pragma: no cover - interface
        raise NotImplementedError


class Arrays(Source):
    """In-memory columns (a dict of arrays, a pandas DataFrame, a pyarrow Table or a Batch),
    served in slices of `batch_size` rows without copying."""

    def __init__(self, data, batch_size: int = 65_536, name: str = "arrays"):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.data = Batch.from_any(data)
        self.batch_size = batch_size
        self.name = name

    def batches(self) -> Iterator[Batch]:
        n = len(self.data)
        for start in range(0, n, self.batch_size):
            yield self.data.slice(start, min(start + self.batch_size, n))

    def __repr__(self):
        return f"Arrays({len(self.data)} rows, batch_size={self.batch_size})"


__all__ = ["Source", "Arrays"]
