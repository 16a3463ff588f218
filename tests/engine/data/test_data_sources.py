from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import DatasetError
from engine.data.sources import load_records, parse_split, row_number

DATA = Path(__file__).parents[2] / "data"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rows(n: int) -> list[dict[str, int]]:
    return [{"i": i} for i in range(n)]


def error_of(path: Path | str, split: str | None = "train") -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_records(str(path), split)
    return info.value


def test_jsonl_reads_rows_and_skips_blank_lines() -> None:
    records = load_records(str(DATA / "sharegpt_small.jsonl"))
    assert len(records) == 3
    # Row numbers are file lines, so the row after the blank line is row 4.
    assert [row_number(records, i) for i in range(3)] == [1, 2, 4]


def test_jsonl_bad_line_names_file_row_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a" 3}\n', encoding="utf-8")
    error = error_of(path)
    assert error.message.startswith("data.jsonl, row 3: not valid JSON (Expecting ':'")
    assert error.hint and "JSON object" in error.hint


def test_jsonl_many_bad_lines_reports_first_five_and_count(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("".join("{oops\n" if i % 2 else '{"ok": 1}\n' for i in range(20)))
    message = error_of(path).message
    assert "data.jsonl: 10 bad rows" in message
    assert "row 2:" in message and "row 10:" in message and "row 12:" not in message
    assert "and 5 more" in message


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    assert "row 2: expected a JSON object, got list" in error_of(path).message


def test_jsonl_non_utf8_names_row_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    message = error_of(path).message
    assert "data.jsonl, row 2: not valid UTF-8 (byte offset 22)" in message


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert load_records(str(path)) == [{"a": 1}]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert "empty.jsonl is empty" in error_of(path).message


def test_missing_file_is_not_mistaken_for_hub_id(tmp_path: Path) -> None:
    message = error_of("data/train.jsonl").message
    assert "not found: data/train.jsonl" in message


def test_directory_and_model_directory(tmp_path: Path) -> None:
    assert "is a directory" in error_of(tmp_path).message
    (tmp_path / "config.json").write_text("{}")
    error = error_of(tmp_path)
    assert "model directory" in error.message and "name_or_path" in (error.hint or "")


def test_model_file_and_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert "m.gguf is a model file" in error_of(tmp_path / "m.gguf").message
    (tmp_path / "d.txt").write_text("hello")
    assert "unsupported dataset file type '.txt'" in error_of(tmp_path / "d.txt").message


def test_json_list_and_wrapped_list(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(rows(3)))
    assert load_records(str(tmp_path / "a.json")) == rows(3)
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "data": rows(2)}))
    assert load_records(str(tmp_path / "b.json")) == rows(2)


def test_json_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n{"a": 1},\n{"a" 2}\n]')
    assert "a.json, line 3 column 6: not valid JSON" in error_of(path).message
    path.write_text(json.dumps({"x": [], "y": []}))
    assert "exactly one list" in error_of(path).message
    path.write_text(json.dumps([{"a": 1}, "text"]))
    assert "a.json, row 2: expected a JSON object, got str" in error_of(path).message
    path.write_bytes(b'[{"a": 1},\n{"a": "\xff"}]')
    assert "a.json, line 2 (byte offset 18): not valid UTF-8" in error_of(path).message


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('instruction,output\n"Say, hi","hi\nthere"\nq,a\n')
    assert load_records(str(path)) == [
        {"instruction": "Say, hi", "output": "hi\nthere"},
        {"instruction": "q", "output": "a"},
    ]
    path.write_text("instruction,output\nq,a\nq,a,extra\n")
    assert "a.csv, row 2: has 3 fields, header has 2" in error_of(path).message
    path.write_text("instruction,output\n")
    assert "header but no rows" in error_of(path).message


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows(5)), path)
    assert load_records(str(path), "train[1:3]") == rows(5)[1:3]
    path.write_bytes(b"not parquet at all")
    assert "a.parquet is not a readable Parquet file" in error_of(path).message


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        (None, list(range(20))),
        ("train", list(range(20))),
        ("train[:5]", list(range(5))),
        ("train[15:]", list(range(15, 20))),
        ("train[3:6]", [3, 4, 5]),
        ("train[:10%]", [0, 1]),
        ("train[10%:20%]", [2, 3]),
        ("train[-2:]", [18, 19]),
        ("train[:1000]", list(range(20))),
    ],
)
def test_split_slicing_on_local_files(
    tmp_path: Path, split: str | None, expected: list[int]
) -> None:
    for suffix in (".jsonl", ".json"):
        path = tmp_path / f"d{suffix}"
        if suffix == ".jsonl":
            write_jsonl(path, rows(20))
        else:
            path.write_text(json.dumps(rows(20)))
        records = load_records(str(path), split)
        assert [r["i"] for r in records] == expected
        assert [row_number(records, i) for i in range(len(records))] == [i + 1 for i in expected]


def test_split_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(4))
    error = error_of(path, "test")
    assert "only split is 'train'" in error.message and "val_size" in (error.hint or "")
    assert "Cannot read the split 'train[a:b]'" in error_of(path, "train[a:b]").message
    assert "selects no rows" in error_of(path, "train[10:]").message


def test_parse_split() -> None:
    assert parse_split("train[10%:20%]") == ("train", (10, True), (20, True))
    assert parse_split("validation") == ("validation", None, None)
    with pytest.raises(DatasetError):
        parse_split("train[5]")


class _FakeDataset:
    def __init__(self, data: list[dict[str, Any]]) -> None:
        self.data = data

    def to_list(self) -> list[dict[str, Any]]:
        return self.data


def test_hub_id_goes_to_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str]] = []

    def fake_load(path: str, split: str) -> _FakeDataset:
        calls.append((path, split))
        return _FakeDataset(rows(3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_records("owner/name", "train[:3]") == rows(3)
    assert calls == [("owner/name", "train[:3]")]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            ConnectionError("Couldn't reach 'owner/name' on the Hub"),
            "cannot reach the Hugging Face",
        ),
        (ValueError("Unknown split \"test\". Should be one of ['train']."), "has no split 'test'"),
        (FileNotFoundError("no such dataset"), "Dataset not found: owner/name"),
        (RuntimeError("boom"), "RuntimeError: boom"),
    ],
)
def test_hub_errors_are_wrapped(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, expected: str
) -> None:
    import datasets

    def fake_load(path: str, split: str) -> _FakeDataset:
        raise exc

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    error = error_of("owner/name", "test")
    assert expected in error.message
    if "reach" in expected:
        assert "HF_HUB_OFFLINE=1" in (error.hint or "")
