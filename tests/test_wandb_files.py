"""tests/wandb_files.py, the reader of offline W&B run files: a file read while W&B writes it gives its complete records."""

import struct

from wandb.proto import wandb_internal_pb2

from wandb_files import BLOCK, FULL, HEADER, LAST, records

FIRST, MIDDLE = 2, 3


def framed(payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """A run file as W&B's writer lays it out (a 7-byte file header, then LevelDB log chunks that never cross a
    block), and the offset at which each record's last chunk ends."""
    out, ends = bytearray(b":W&B" + bytes(HEADER - 4)), []
    for payload in payloads:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < HEADER:
                out += bytes(left)
                continue
            chunk, payload = payload[: left - HEADER], payload[left - HEADER :]
            kind = (FULL if not payload else FIRST) if first else (LAST if not payload else MIDDLE)
            out += struct.pack("<IHB", 0, len(chunk), kind) + chunk
            first = False
            if not payload:
                break
        ends.append(len(out))
    return bytes(out), ends


def history_record(key: str, value: str) -> bytes:
    record = wandb_internal_pb2.Record()
    record.history.item.add(key=key, value_json=value)
    return record.SerializeToString()


def test_every_prefix_of_a_run_file_reads_as_its_complete_records(tmp_path):
    payloads = [history_record("a", "1"), history_record("big", '"' + "x" * 40_000 + '"'), history_record("b", "2")]
    data, ends = framed(payloads)
    assert ends[1] > BLOCK  # the big record spans two blocks
    path = tmp_path / "run.wandb"
    cuts = {*range(HEADER, len(data) + 1, 97), BLOCK - 1, BLOCK, BLOCK + HEADER, *ends, *(end - 1 for end in ends)}
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        read = [record.SerializeToString() for record in records(path)]
        assert read == payloads[: sum(end <= cut for end in ends)], cut
