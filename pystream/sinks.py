"""Sinks: where results go."""

from __future__ import annotations

from .batch import Batch


class Sink:
    name: str

    def open(self) -> None:
        pass

    def write(self, batch: Batch) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self):
        return None


class Collect(Sink):
    """Keeps every batch in memory; `flow.run()` returns them concatenated under `name`."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"Collect needs a non-empty name, got {name!r}")
        self.name = name
        self._batches: list[Batch] = []

    def open(self) -> None:
        self._batches = []

    def write(self, batch: Batch) -> None:
        self._batches.append(batch)

    def close(self) -> Batch:
        nonempty = [b for b in self._batches if len(b)]
        if nonempty:
            return Batch.concat(nonempty)
        return self._batches[0] if self._batches else Batch()


class Print(Sink):
    """Prints each non-empty batch (for exploring a flow)."""

    def __init__(self, name: str = "print", max_rows: int = 10):
        self.name = name
        self.max_rows = max_rows

    def write(self, batch: Batch) -> None:
        if len(batch):
            print(f"[{self.name}] {batch!r}")
            print(batch.slice(0, self.max_rows).to_dict())


__all__ = ["Sink", "Collect", "Print"]
