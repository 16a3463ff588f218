"""The import's frame: reading, detection, refusals as rows, the written preset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from engine.config import derived
from engine.config.importers import SOURCES, STATUSES, detect_source, import_config
from engine.config.importers.build import MAX_CONFIG_BYTES
from engine.config.importers.common import CHAT_TEMPLATES
from engine.config.importers.table import REFUSED, UNMAPPED
from engine.config.presets import load_preset
from engine.core.errors import ConfigError
from tests.engine.config.importers.helpers import FIXTURES, rows_by_key

ALL = sorted(str(path.relative_to(FIXTURES)) for path in FIXTURES.rglob("*.y*ml"))


def test_there_are_real_fixtures_from_both_tools() -> None:
    assert len(ALL) >= 6
    for name in ALL:
        header = (FIXTURES / name).read_text().splitlines()[0]
        assert header.startswith(
            "# finetty test fixture, verbatim below this line: https://github.com/"
        )


@pytest.mark.parametrize("name", ALL)
def test_each_fixture_is_detected_and_every_key_has_a_row(name: str) -> None:
    path = FIXTURES / name
    result = import_config(path)
    assert result.source == name.split("/")[0]
    data = yaml.safe_load(path.read_text())
    keys = {row.source_key.split("[")[0] for row in result.rows}
    assert set(data) <= keys  # nothing read is left without a row
    assert {row.status for row in result.rows} <= set(STATUSES)
    for row in result.rows:
        if row.status in (UNMAPPED, REFUSED):
            assert row.note, row.source_key


@pytest.mark.parametrize("name", ALL)
def test_the_written_preset_loads_as_train_loads_it(name: str, tmp_path: Path) -> None:
    result = import_config(FIXTURES / name)
    out = tmp_path / "imported.yaml"
    out.write_text(result.yaml_text)
    preset, _ = load_preset(str(out))
    assert preset == result.preset


def test_chat_templates_exist_in_the_data_layer() -> None:
    from engine.data.templates import CHAT_TEMPLATES as NAMED

    assert set(CHAT_TEMPLATES.values()) - {"model", "auto"} <= set(NAMED)


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_value_the_schema_refuses_becomes_a_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "base_model: m\nadapter: lora\noptimizer: adamw_hf\nlr_scheduler: one_cycle\n"
        "learning_rate: 3\nmicro_batch_size: 4\n",
    )
    result = import_config(path)
    rows = rows_by_key(result)
    for key in ("optimizer", "lr_scheduler", "learning_rate"):
        assert rows[key].status == REFUSED and rows[key].targets == {}, key
    assert "adamw_torch" in rows["optimizer"].note  # pydantic's list of the allowed names
    assert "less than or equal to 1" in rows["learning_rate"].note
    assert result.preset.training.optim == "adamw_torch"  # finetty's default, said on stderr
    assert result.preset.training.per_device_train_batch_size == 4
    assert "optimizer" in result.yaml_text.split("# Not imported")[1]


def test_a_task_this_build_cannot_train_is_refused_with_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(derived, "UNTRAINABLE_TASKS", {"dpo": "not in this build"})
    path = write(tmp_path, "base_model: m\nadapter: lora\nrl: dpo\nrl_beta: 0.3\n")
    result = import_config(path)
    rows = rows_by_key(result)
    assert rows["rl"].status == REFUSED and "not in this build" in rows["rl"].note
    assert rows["rl_beta"].status == REFUSED
    assert result.preset.task == "sft" and "preference:" not in result.yaml_text


def test_several_datasets_name_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "base_model: m\ndatasets:\n  - path: a/one\n    type: alpaca\n  - path: b/two\n    type: sharegpt\n",
    )
    result = import_config(path)
    rows = rows_by_key(result)
    assert result.preset.dataset.path == "a/one"
    assert rows["datasets[1]"].status == UNMAPPED and "one dataset" in rows["datasets[1]"].note


def test_odd_text_in_values_stays_one_yaml_line(tmp_path: Path) -> None:
    # PyYAML breaks lines at U+2028 and NEL: a comment quoting them must not.
    # An escape code in a key (an unknown one, named in the closing comment) is no YAML at all.
    path = write(
        tmp_path,
        'base_model: "org/m\\u2028x"\noutput_dir: "a\\x85b"\nadapter: lora\n"k\\x1b\\u2028": 1\n',
    )
    result = import_config(path)
    assert result.preset.model.name_or_path == "org/m\u2028x"
    assert "k\\u001b\\u2028: 1  (not a key" in result.yaml_text
    out = write(tmp_path, result.yaml_text, "out.yaml")
    assert load_preset(str(out))[0].model.name_or_path == "org/m\u2028x"


def test_preset_name_comes_from_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "base_model: m\nadapter: lora\n", "my config!.yml")
    assert import_config(path).preset.name == "my-config-"


def test_detection_and_from(tmp_path: Path) -> None:
    assert set(SOURCES) == {"axolotl", "llamafactory"}
    neither = write(tmp_path, "foo: 1\nbar: 2\n")
    with pytest.raises(ConfigError, match="neither an Axolotl nor a LLaMA-Factory") as caught:
        import_config(neither)
    assert str(neither) in caught.value.message and "--from" in str(caught.value.hint)
    # Named, the source maps whatever is there (each unknown key a row).
    rows = rows_by_key(import_config(neither, "llamafactory"))
    assert rows["foo"].status == UNMAPPED
    with pytest.raises(ConfigError, match="--from nope"):
        import_config(neither, "nope")
    with pytest.raises(ConfigError, match="already a finetty preset"):
        detect_source({"model": {"name_or_path": "m"}, "training": {}}, neither)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base_model: m\n  bad: indent\n", r"config.yml:2: not valid YAML"),
        ("", "empty"),
        ("- a\n- b\n", "mapping"),
        ("a: &x [1, 2]\nb: *x\nbase_model: m\nbase_model: n\n", "duplicate key"),
    ],
)
def test_bad_files_are_config_errors_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        import_config(path)
    assert str(path) in caught.value.message


def test_a_fifo_and_a_huge_file_are_refused_unread(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="named pipe"):
        import_config(fifo)  # would block forever if opened
    huge = write(tmp_path, "a: 1\n" + "#" * MAX_CONFIG_BYTES, "huge.yml")
    with pytest.raises(ConfigError, match="larger than a training config"):
        import_config(huge)
    link = tmp_path / "link.yml"
    link.symlink_to(FIXTURES / "axolotl/qlora.yml")
    assert import_config(link).source == "axolotl"  # a symlink to a file reads as presets do


# Keys the fixtures do not hold but the importers read with care.
EXTRA_KEYS = {
    "axolotl": ["rl", "rpo_alpha", "lora_target_modules", "train_on_inputs", "sdp_attention"],
    "llamafactory": ["pref_loss", "flash_attn", "neat_packing", "additional_target", "stage"],
}
ODD_VALUES = [[1], {"a": 1}, None, True, -1, "x\x1b"]


@pytest.mark.parametrize("name", ["axolotl/qlora.yml", "llamafactory/llama3_lora_dpo.yaml"])
def test_any_value_of_any_key_ends_in_a_valid_preset(name: str, tmp_path: Path) -> None:
    # A list where a name belongs once raised TypeError (unhashable) out of the importer.
    base = yaml.safe_load((FIXTURES / name).read_text())
    source = name.split("/")[0]
    for key in [*base, *EXTRA_KEYS[source]]:
        for odd in ODD_VALUES:
            path = write(tmp_path, yaml.safe_dump({**base, key: odd}))
            import_config(path, source)  # which validates the preset text it writes
