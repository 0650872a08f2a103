"""Checkpoint storage: one file per epoch, written atomically, checksummed, with a manifest.

Layout of a checkpoint directory:

    MANIFEST.json          {"format": 1, "flow": <fingerprint>, "epochs": [...]}  (atomic rewrite)
    epoch-00000012.ckpt    header line (JSON: format, epoch, sha256, size) + pickled payload

A file is written under a temporary name, fsynced, then renamed, and the directory is
fsynced, so a crash leaves either the complete epoch or none: a torn checkpoint is never
read. Every epoch carries the SHA-256 of its payload; a truncated or bit-flipped file is
detected and refused, never unpickled. Local paths by default; any fsspec URL
("s3://bucket/flow", "memory://x") when fsspec is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile

FORMAT_VERSION = 1
_EPOCH_FILE = re.compile(r"^epoch-(\d{8})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: corrupt, from another format, or from a different flow."""


class _LocalFS:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def write_atomic(self, name: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            from . import _faults

            _faults.maybe_crash("checkpoint_write")
            os.replace(tmp, self.path(name))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dirfd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.root))

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def size(self, name: str) -> int:
        return os.path.getsize(self.path(name))


class _FsspecFS:
    def __init__(self, url: str):
        try:
            import fsspec
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"checkpoint location {url!r} needs fsspec: pip install fsspec") from e
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write_atomic(self, name: str, data: bytes) -> None:
        tmp = self.path(f".{name}.tmp")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, self.path(name))

    def read(self, name: str) -> bytes:
        with self.fs.open(self.path(name), "rb") as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def listdir(self) -> list[str]:
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))

    def remove(self, name: str) -> None:
        if self.fs.exists(self.path(name)):
            self.fs.rm(self.path(name))

    def size(self, name: str) -> int:
        return int(self.fs.size(self.path(name)))


def _open_fs(location: str):
    return _FsspecFS(location) if "://" in location else _LocalFS(location)


class CheckpointStore:
    """Epochs of one flow in one location. `keep` newest epochs are kept."""

    def __init__(self, location: str, keep: int = 3):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        self.location = str(location)
        self.fs = _open_fs(self.location)
        self.keep = keep

    @staticmethod
    def name_of(epoch: int) -> str:
        return f"epoch-{epoch:08d}.ckpt"

    def epochs(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self.fs.listdir() if (m := _EPOCH_FILE.match(n)))

    def write(self, epoch: int, payload: dict, flow_fingerprint: str) -> int:
        """Writes epoch `epoch` durably; returns its size in bytes."""
        body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        header = json.dumps({"format": FORMAT_VERSION, "epoch": epoch, "flow": flow_fingerprint,
                             "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}).encode()
        self.fs.write_atomic(self.name_of(epoch), header + b"\n" + body)
        epochs = self.epochs()
        manifest = {"format": FORMAT_VERSION, "flow": flow_fingerprint, "epochs": epochs[-self.keep:]}
        self.fs.write_atomic("MANIFEST.json", json.dumps(manifest, indent=1).encode())
        for old in epochs[:-self.keep]:
            self.fs.remove(self.name_of(old))
        return len(header) + 1 + len(body)

    def read_header(self, epoch: int) -> dict:
        raw = self.fs.read(self.name_of(epoch))
        return self._split(raw, epoch)[0]

    def read(self, epoch: int, flow_fingerprint: str | None = None) -> dict:
        """The payload of an epoch, after checking format, checksum and (if given) the flow."""
        raw = self.fs.read(self.name_of(epoch))
        header, body = self._split(raw, epoch)
        if header.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {self.name_of(epoch)} has format {header.get('format')!r}; "
                                  f"this pystream reads format {FORMAT_VERSION}")
        if len(body) != header["size"] or hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise CheckpointError(f"checkpoint {self.name_of(epoch)} is corrupt (size or SHA-256 mismatch); "
                                  f"it was not loaded")
        if flow_fingerprint is not None and header["flow"] != flow_fingerprint:
            raise CheckpointError(
                f"checkpoint in {self.location!r} was written by a different flow (its windows, aggregations, "
                f"keys, sources or sinks changed): checkpoint flow {header['flow'][:12]}, this flow "
                f"{flow_fingerprint[:12]}; use a new checkpoint directory or run without resume")
        return pickle.loads(body)

    def _split(self, raw: bytes, epoch: int) -> tuple[dict, bytes]:
        head, sep, body = raw.partition(b"\n")
        try:
            header = json.loads(head) if sep else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or "sha256" not in header:
            raise CheckpointError(f"checkpoint {self.name_of(epoch)} has no valid header; it is corrupt or not a "
                                  f"pystream checkpoint")
        return header, body

    def latest(self, flow_fingerprint: str | None = None) -> tuple[int, dict] | None:
        """The newest readable epoch (a corrupt newest epoch is an error, not skipped silently)."""
        epochs = self.epochs()
        if not epochs:
            return None
        return epochs[-1], self.read(epochs[-1], flow_fingerprint)

    def describe(self) -> list[dict]:
        """One summary per epoch, for `pystream checkpoints list|show`."""
        out = []
        for e in self.epochs():
            info = {"epoch": e, "bytes": self.fs.size(self.name_of(e))}
            try:
                payload = self.read(e)
                info.update(ok=True, finished=payload.get("finished", False), positions=payload.get("positions"),
                            operators={k: {"watermark": v.get("watermark"), "keys": v.get("num_keys")}
                                       for k, v in payload.get("operator_info", {}).items()},
                            guarantee=payload.get("guarantee"))
            except CheckpointError as err:
                info.update(ok=False, error=str(err))
            out.append(info)
        return out
