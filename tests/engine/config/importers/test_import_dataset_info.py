"""LLaMA-Factory's dataset names resolved through its real data/dataset_info.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.importers import import_config, llamafactory
from engine.config.importers.llamafactory_data import load
from engine.config.importers.table import SAME, UNMAPPED
from engine.core.errors import ConfigError
from tests.engine.config.importers.helpers import FIXTURES, rows_by_key

INFO = FIXTURES / "llamafactory" / "data" / "dataset_info.json"
SFT = FIXTURES / "llamafactory" / "llama3_lora_sft.yaml"


def test_the_first_name_is_imported_and_the_rest_named() -> None:
    result = import_config(SFT, dataset_info=INFO)
    rows = rows_by_key(result)
    assert result.dataset_info == INFO
    assert result.preset.dataset.path == str((INFO.parent / "identity.json").absolute())
    assert result.preset.dataset.format == "alpaca"
    assert rows["dataset[1]"].source_value == "alpaca_en_demo"
    assert rows["dataset[1]"].status == UNMAPPED and "one dataset" in rows["dataset[1]"].note


def test_found_where_llamafactory_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert import_config(SFT).dataset_info is None  # finetty's folder has no data/
    monkeypatch.chdir(FIXTURES / "llamafactory")  # as LLaMA-Factory runs, from its root
    assert import_config(SFT).dataset_info == Path.cwd() / "data" / "dataset_info.json"


def test_preference_entries_leave_the_layout_to_detection() -> None:
    result = import_config(FIXTURES / "llamafactory" / "llama3_lora_dpo.yaml", dataset_info=INFO)
    rows = rows_by_key(result)
    assert result.preset.dataset.path.endswith("dpo_en_demo.json")
    assert result.preset.dataset.format == "auto"
    assert rows["dataset_info.json[dpo_en_demo].ranking"].status == SAME


def rows_for(name: str, **config: object) -> dict:
    mapping = llamafactory.map_config({"dataset": name, **config}, load(INFO))
    return {row.source_key: row for row in mapping.rows}


def test_hub_entries_and_their_layouts() -> None:
    rows = rows_for("ultrachat_200k")  # messages of role/content: finetty's messages format
    assert rows["dataset"].targets == {
        "dataset.path": "HuggingFaceH4/ultrachat_200k",
        "dataset.format": "messages",
    }
    assert rows["dataset_info.json[ultrachat_200k].tags.role_tag"].status == SAME
    assert rows["dataset_info.json[ultrachat_200k].ms_hub_url"].status == SAME
    lima = rows_for("lima")["dataset"].targets
    assert lima == {"dataset.path": "llamafactory/lima", "dataset.format": "sharegpt"}


def test_renamed_columns_are_named_to_fix_in_the_data() -> None:
    rows = rows_for("lmsys_chat")  # conversation column, "human" user tag
    assert rows["dataset"].targets["dataset.format"] == "messages"
    column = rows["dataset_info.json[lmsys_chat].columns.messages"]
    assert column.status == UNMAPPED and "'messages'" in column.note
    assert rows["dataset_info.json[lmsys_chat].tags.user_tag"].status == UNMAPPED
    prompt = rows_for("openorca")["dataset_info.json[openorca].columns.prompt"]
    assert prompt.status == UNMAPPED and "'instruction'" in prompt.note
    subset = rows_for("redpajama_v2", stage="pt")
    assert subset["dataset"].targets["dataset.format"] == "text"
    assert subset["dataset_info.json[redpajama_v2].subset"].status == UNMAPPED


def test_entries_finetty_cannot_read() -> None:
    rows = rows_for("deepctrl")  # ModelScope only
    assert rows["dataset"].status == UNMAPPED and "hub id or local file" in rows["dataset"].note
    assert rows["dataset_info.json[deepctrl].ms_hub_url"].status == UNMAPPED
    assert rows_for("no_such_set")["dataset"].status == UNMAPPED


@pytest.mark.parametrize(
    ("text", "message"),
    [("{\n  oops\n}", ":2: not valid JSON"), ("[1, 2]", "not a list"), (None, "no such file")],
)
def test_bad_dataset_info_is_a_config_error(tmp_path: Path, text: str | None, message: str) -> None:
    info = tmp_path / "dataset_info.json"
    if text is not None:
        info.write_text(text)
    with pytest.raises(ConfigError, match=message):
        import_config(SFT, dataset_info=info)


def test_dataset_info_is_for_llamafactory_only() -> None:
    with pytest.raises(ConfigError, match="only LLaMA-Factory"):
        import_config(FIXTURES / "axolotl" / "qlora.yml", dataset_info=INFO)
