"""Read an offline W&B run's `run-<id>.wandb` file: W&B's record log (LevelDB log framing of protobuf records)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: Path) -> Iterator:
    """The file's complete records in order; a last record that W&B is still writing is left for the next read."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # block trailer padding
            offset += left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if length == 0 and kind == 0:
            offset += left
            continue
        if offset + HEADER + length > len(data):  # read while being written: a truncated tail, not corrupt
            return
        pending += data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(path: Path, timeout: float = 120.0) -> list:
    """The run file's records once it ends with the run's exit record. `run.finish()` can return while W&B's service
    process is still writing the last rows (seen on a loaded machine: the last validation row missing at the first
    read, present a moment later), so a reader waits for the file to be complete instead of racing the writer."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))
        if any(record.WhichOneof("record_type") == "exit" for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def history_and_config(path: Path) -> tuple[list[dict], dict]:
    """Every logged row, and the config as updated last, of a finished run file."""
    history, config = [], {}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return history, config
