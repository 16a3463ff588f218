"""Read dataset rows from a local file or the Hugging Face hub, with HF-style split slicing.

Local files are parsed by our own code (stdlib json/csv, pyarrow for Parquet) rather than by
``datasets``, so every problem can name the file and the 1-based row it is on.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.config.schema import BUILTIN_DATASET
from engine.core.errors import DatasetError
from engine.core.input_files import regular_file_problem
from engine.data import builtin_data

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth")
MAX_REPORTED = 5
_SPLIT_RE = re.compile(r"^([\w.-]+)(?:\[(.*)\])?$")
_BOUND_RE = re.compile(r"^\s*(-?\d+)\s*(%?)\s*$")
_HUB_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


class Records(list):  # type: ignore[type-arg]
    """A list of row dicts that remembers each row's 1-based number in its source file.

    Split slicing and skipped blank lines make list index and file row differ; later stages
    (format validation, encoding) use ``row_numbers`` so their messages point at the file.
    """

    def __init__(self, rows: list[dict[str, Any]], row_numbers: list[int]) -> None:
        super().__init__(rows)
        self.row_numbers = row_numbers

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Records(list.__getitem__(self, index), self.row_numbers[index])
        return list.__getitem__(self, index)


def row_number(records: list[Any], index: int) -> int:
    """The 1-based source row of ``records[index]`` (plain lists count from 1)."""
    numbers = getattr(records, "row_numbers", None)
    return numbers[index] if numbers is not None else index + 1


def display_name(source: str) -> str:
    """How messages name a dataset: the file name, or the hub id as given."""
    return Path(source).name if Path(source).suffix else source


def bad_rows_error(source: str, problems: list[str], total: int, *, hint: str) -> DatasetError:
    """One error for many bad rows: the first few problems, then how many more there are.

    Each problem reads "row N: what is wrong"; a single one becomes "file, row N: ...".
    """
    name = display_name(source)
    if total == 1:
        return DatasetError(f"{name}, {problems[0]}", hint=hint)
    shown = "\n".join(f"  {p}" for p in problems[:MAX_REPORTED])
    more = f"\n  ... and {total - MAX_REPORTED} more" if total > MAX_REPORTED else ""
    return DatasetError(f"{name}: {total} bad rows:\n{shown}{more}", hint=hint)


def parse_split(split: str) -> tuple[str, tuple[int, bool] | None, tuple[int, bool] | None]:
    """``train[10%:20%]`` -> ("train", (10, True), (20, True)); a bound is (value, is_percent)."""
    match = _SPLIT_RE.match(split.strip())
    if not match:
        raise _split_error(split)
    name, inner = match.group(1), match.group(2)
    if inner is None:
        return name, None, None
    if inner.count(":") != 1:
        raise _split_error(split)
    bounds: list[tuple[int, bool] | None] = []
    for part in inner.split(":"):
        if not part.strip():
            bounds.append(None)
            continue
        bound = _BOUND_RE.match(part)
        if not bound:
            raise _split_error(split)
        bounds.append((int(bound.group(1)), bound.group(2) == "%"))
    return name, bounds[0], bounds[1]


def _split_error(split: str) -> DatasetError:
    return DatasetError(
        f"Cannot read the split '{split}'.",
        hint="Write a split like train, train[:1000], train[100:200], train[:10%] "
        "or train[10%:20%].",
    )


def slice_range(n: int, start: tuple[int, bool] | None, stop: tuple[int, bool] | None) -> range:
    """Resolve split bounds against ``n`` rows; percentages round to the nearest row like HF."""

    def resolve(bound: tuple[int, bool] | None, default: int) -> int:
        if bound is None:
            return default
        value, percent = bound
        return round(value * n / 100) if percent else value

    return range(n)[slice(resolve(start, 0), resolve(stop, n))]


def load_records(path: str, split: str | None = "train") -> list[dict[str, Any]]:
    """Rows of a local .jsonl/.json/.csv/.parquet file, the built-in dataset or a hub dataset,
    sliced by ``split``."""
    if path == BUILTIN_DATASET:
        return _load_builtin(split)
    local = Path(path).expanduser()
    if local.exists():
        return _load_local(local, split)
    if _HUB_ID_RE.match(path) and not path.lower().endswith(LOCAL_SUFFIXES + MODEL_SUFFIXES):
        return _load_hub(path, split)
    raise DatasetError(
        f"Dataset file not found: {path}",
        hint="Check the path (relative paths start from the current directory), "
        "or give a hub dataset id such as mlabonne/FineTome-100k.",
    )


def load_task_records(
    path: str,
    split: str | None,
    builtin: Callable[[str], list[dict[str, Any]]],
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """``load_records`` for a task whose built-in rows are its own view of the skills (GRPO's
    prompts, the preference pairs): ``builtin(split)`` gives them; then the first max_rows."""
    records = builtin(split or "train") if path == BUILTIN_DATASET else load_records(path, split)
    return records[:max_rows] if max_rows is not None else records


def _load_builtin(split: str | None) -> Records:
    """The built-in dataset's training rows; its held-out split is the exact-match evaluation's."""
    rows = builtin_data.records("train")
    if split is None:
        return Records(rows, list(range(1, len(rows) + 1)))
    split_name, start, stop = parse_split(split)
    if split_name != "train":
        raise DatasetError(
            f"{BUILTIN_DATASET} has one split to train on, 'train'; '{split}' was asked for.",
            hint="Use split: train (or a slice such as train[:100]); its held-out rows are "
            "kept for the exact-match evaluation.",
        )
    return _sliced(
        BUILTIN_DATASET, Records(rows, list(range(1, len(rows) + 1))), start, stop, split
    )


def _load_local(path: Path, split: str | None) -> Records:
    name = path.name
    problem = regular_file_problem(path)
    if problem and not path.is_dir():  # a folder gets its own message below
        raise DatasetError(
            f"dataset.path: {problem}.",
            hint="Point dataset.path at a .jsonl/.json/.csv/.parquet file (copy the output of "
            "a pipe or a device into a file first).",
        )
    if path.is_dir():
        if any((path / marker).exists() for marker in ("config.json", "model.safetensors")):
            raise DatasetError(
                f"{path} is a model directory, not a dataset.",
                hint="Put the model under model.name_or_path and a .jsonl/.json/.csv/.parquet "
                "file under dataset.path.",
            )
        raise DatasetError(
            f"{path} is a directory; a dataset must be one file.",
            hint=f"Give one file inside it ({', '.join(LOCAL_SUFFIXES)}).",
        )
    suffix = path.suffix.lower()
    if suffix in MODEL_SUFFIXES:
        raise DatasetError(
            f"{name} is a model file, not a dataset.",
            hint="Put it under model.name_or_path; dataset.path takes .jsonl/.json/.csv/.parquet.",
        )
    if suffix not in LOCAL_SUFFIXES:
        raise DatasetError(
            f"{name}: unsupported dataset file type '{suffix or '(none)'}'.",
            hint=f"Use one of {', '.join(LOCAL_SUFFIXES)}.",
        )
    start = stop = None
    if split is not None:
        split_name, start, stop = parse_split(split)
        if split_name != "train":
            raise DatasetError(
                f"{name} is a local file, whose only split is 'train'; '{split}' was asked for.",
                hint="Use split: train (or a slice such as train[90%:]); "
                "for a validation set, use val_size.",
            )
    if suffix == ".jsonl":
        return _parse_jsonl(name, path, start, stop)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if not data.strip():
        raise _empty(name)
    if suffix == ".parquet":
        rows, numbers = _parse_parquet(name, path)
    else:
        text = _decode(name, data)
        rows = _parse_json(name, text) if suffix == ".json" else _parse_csv(name, text)
        numbers = list(range(1, len(rows) + 1))
    return _sliced(name, Records(rows, numbers), start, stop, split)


def _sliced(name: str, records: Records, start: Any, stop: Any, split: str | None) -> Records:
    picked = slice_range(len(records), start, stop)
    out = records[picked.start : picked.stop]
    if not out:
        raise DatasetError(
            f"{name}: the split '{split}' selects no rows (the file has {len(records)}).",
            hint="Widen the slice, or check that the file has the rows you expect.",
        )
    return out


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{name}, line {line} (byte offset {exc.start}): not valid UTF-8.",
            hint="Re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).",
        ) from exc


def _empty(name: str) -> DatasetError:
    return DatasetError(f"{name} is empty.", hint="Point dataset.path at a file with rows.")


def _jsonl_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, bytes) of each line, read one line at a time."""
    offset = 0
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                yield number, offset, raw
                offset += len(raw)
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from exc


def _parse_jsonl(name: str, path: Path, start: Any, stop: Any) -> Records:
    # Two streaming passes: count the rows (for the split slice), then parse only the rows the
    # slice keeps. Only one line is in memory at a time, however large the file.
    count = sum(1 for _number, _offset, raw in _jsonl_lines(path) if raw.strip())
    if not count:
        raise _empty(name)
    picked = slice_range(count, start, stop)
    if not picked:
        raise DatasetError(
            f"{name}: the split selects no rows (the file has {count}).",
            hint="Widen the slice, or check that the file has the rows you expect.",
        )
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    problems: list[str] = []
    bad = 0
    index = -1
    for number, offset, raw in _jsonl_lines(path):
        if not raw.strip():
            continue
        index += 1
        if index < picked.start:
            continue
        if index >= picked.stop:
            break
        problem = None
        try:
            text = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
            value = json.loads(text)
            if not isinstance(value, dict):
                problem = f"row {number}: expected a JSON object, got {type(value).__name__}"
        except UnicodeDecodeError as exc:
            problem = f"row {number}: not valid UTF-8 (byte offset {offset + exc.start})"
        except json.JSONDecodeError as exc:
            problem = f"row {number}: not valid JSON ({exc.msg}: column {exc.colno})"
        except (RecursionError, ValueError) as exc:  # nesting too deep; an int past 4300 digits
            problem = f"row {number}: not valid JSON ({_json_limit(exc)})"
        if problem:
            bad += 1
            problems.append(problem)
            continue
        rows.append(value)
        numbers.append(number)
    if bad:
        raise bad_rows_error(
            name, problems, bad, hint="Each line of a .jsonl file must be one JSON object."
        )
    return Records(rows, numbers)


def _parse_json(name: str, text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{name}, line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}).",
            hint="A .json dataset is one JSON list of objects; for one object a line use .jsonl.",
        ) from exc
    except (RecursionError, ValueError) as exc:
        raise DatasetError(
            f"{name}: not valid JSON ({_json_limit(exc)}).",
            hint="A .json dataset is one JSON list of objects; for one object a line use .jsonl.",
        ) from None
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) != 1:
            raise DatasetError(
                f"{name}: expected a list of rows, or an object holding exactly one list; "
                f"found an object with keys {sorted(value)[:10]}.",
                hint='Write the file as [{...}, {...}] or {"data": [{...}, ...]}.',
            )
        value = value[lists[0]]
    if not isinstance(value, list):
        raise DatasetError(
            f"{name}: expected a list of rows, got {type(value).__name__}.",
            hint="Write the file as [{...}, {...}].",
        )
    problems = [
        f"row {i}: expected a JSON object, got {type(row).__name__}"
        for i, row in enumerate(value, start=1)
        if not isinstance(row, dict)
    ]
    if problems:
        raise bad_rows_error(name, problems, len(problems), hint="Each row must be an object.")
    if not value:
        raise DatasetError(f"{name} holds no rows.", hint="Add rows to the list.")
    return value


def _json_limit(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "a number too long to read" if "digits" in str(exc) else str(exc).splitlines()[0]


def _parse_csv(name: str, text: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    # The csv module refuses fields over 128 KiB by default; no field can be longer than the file.
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        header = next(reader, None)
        if not header:
            raise DatasetError(f"{name} has no header row.", hint="The first line names columns.")
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        for number, cells in enumerate(reader, start=1):
            if not cells:
                continue
            if len(cells) != len(header):
                problems.append(f"row {number}: has {len(cells)} fields, header has {len(header)}")
                continue
            rows.append(dict(zip(header, cells, strict=True)))
    except csv.Error as exc:
        raise DatasetError(
            f"{name}, line {reader.line_num}: not valid CSV ({exc}).",
            hint="Check quoting on that line.",
        ) from exc
    finally:
        csv.field_size_limit(limit)
    if problems:
        raise bad_rows_error(
            name, problems, len(problems), hint="Quote fields that contain commas or newlines."
        )
    if not rows:
        raise DatasetError(f"{name} has a header but no rows.", hint="Add rows below the header.")
    return rows


def _parse_parquet(name: str, path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(
            f"{name} is not a readable Parquet file ({exc}).",
            hint="Re-export it with pandas.DataFrame.to_parquet or pyarrow.",
        ) from exc
    if not rows:
        raise DatasetError(f"{name} holds no rows.", hint="Point dataset.path at a file with rows.")
    return rows, list(range(1, len(rows) + 1))


def _load_hub(repo_id: str, split: str | None) -> Records:
    """Load a hub dataset with ``datasets`` (imported here: it costs ~1.3 s) and wrap its errors."""
    if split is None:
        raise DatasetError(
            f"A hub dataset needs a split ({repo_id}).", hint="Set dataset.split, e.g. train."
        )
    parse_split(split)  # fail on a malformed split before touching the network
    import datasets

    try:
        loaded = datasets.load_dataset(repo_id, split=split)
        rows = loaded.to_list()
    except Exception as exc:  # every failure becomes a DatasetError with a hint
        raise _hub_error(repo_id, split, exc) from exc
    if not rows:
        raise DatasetError(f"{repo_id} [{split}] holds no rows.", hint="Check the split.")
    return Records(rows, list(range(1, len(rows) + 1)))


def _hub_error(repo_id: str, split: str, exc: Exception) -> DatasetError:
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    offline = {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "Timeout"}
    if names & offline or "offline" in text.lower() or "connect" in text.lower():
        return DatasetError(
            f"Cannot load the hub dataset {repo_id}: cannot reach the Hugging Face hub ({text}).",
            hint="Set HF_HUB_OFFLINE=1 and use a local file, or check the network.",
        )
    if names & {"DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError"}:
        return DatasetError(
            f"Dataset not found: {repo_id} ({text}).",
            hint="Check the id on huggingface.co/datasets, or give a local file path. "
            "Gated datasets need `huggingface-cli login`.",
        )
    if "split" in text.lower():
        return DatasetError(
            f"{repo_id} has no split '{split}' ({text}).",
            hint="Use one of the splits the dataset card lists, e.g. train.",
        )
    return DatasetError(
        f"Cannot load the hub dataset {repo_id} [{split}]: {type(exc).__name__}: {text}",
        hint="Download it and point dataset.path at a local file.",
    )
