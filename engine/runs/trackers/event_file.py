"""A TensorBoard event file written in the calling thread, through tensorboard's own protos
and record framing. torch's SummaryWriter writes from a thread of its own, whose failure
prints a traceback and surfaces only at a later call; here a failed write raises where the
tracker's guard can turn it into an alarm.

Each batch of records is appended with the file opened afresh, so a folder deleted or made
unwritable mid-run is noticed at the next step rather than written into a lost inode."""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path
from typing import Any


class EventFile:
    def __init__(self, log_dir: Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        log_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard's naming: it reads every file of the folder in order of this timestamp,
        # so a resumed run's new file follows the first.
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = log_dir / name
        self.append([Event(wall_time=time.time(), file_version="brain.Event:2")])

    def scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
        )
        self.append([self._event(summary, step)])

    def text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.compat.proto.types_pb2 import DT_STRING
        from tensorboard.plugins.text.metadata import create_summary_metadata

        tensor = TensorProto(
            dtype=DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        value = Summary.Value(tag=tag, metadata=create_summary_metadata(tag, ""), tensor=tensor)
        self.append([self._event(Summary(value=[value]), step)])

    @staticmethod
    def _event(summary: Any, step: int) -> Any:
        from tensorboard.compat.proto.event_pb2 import Event

        return Event(wall_time=time.time(), step=step, summary=summary)

    def append(self, events: list[Any]) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        for event in events:
            records.write(event.SerializeToString())
        # Whole records at once: a reader never sees half of one, a crash loses no step.
        with open(self.path, "ab") as file:
            file.write(buffer.getvalue())
