"""engine.config.derived: each rule from a preset to a run's settings, and every reader of a rule
that once had copies (the run, the estimator, the schema's checks, export, the fast path) giving
the rule's own answer."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from engine.config import derived
from engine.config.derived import (
    CPU_AUTO_MICRO_BATCH,
    Precision,
    compute_dtype,
    dataset_prep,
    graphs_wanted,
    micro_batch,
    model_load,
    offload_activations,
    precision,
    quant_bits,
    quantization,
    train_settings,
    uses_fsdp,
    uses_gpu,
)
from engine.config.schema import Preset
from engine.core.errors import ConfigError
from engine.plan.estimate import GIB, estimate, make_plan, memory, recommend_micro_batch
from engine.plan.gpus import gpu_spec
from engine.plan.schedule import run_steps, total_steps
from engine.plan.token_lengths import DatasetLengths

QWEN_05B = "Qwen/Qwen2.5-0.5B-Instruct"
H200, T4 = gpu_spec("h200"), gpu_spec("t4")


def preset(method: str = "lora", model: dict | None = None, **training) -> Preset:
    return Preset.model_validate(
        {
            "model": {"name_or_path": QWEN_05B, **(model or {})},
            "method": method,
            "training": training,
        }
    )


QUANTIZED = [
    ("lora", {}, None, "none"),
    ("qlora", {}, 4, "nf4"),
    ("qlora", {"bnb_4bit_quant_type": "fp4"}, 4, "fp4"),
    ("lora", {"load_in_8bit": True}, 8, "int8"),
    ("full", {}, None, "none"),
]


@pytest.mark.parametrize(("method", "model", "bits", "label"), QUANTIZED)
def test_quantization_of_the_base(method: str, model: dict, bits: int | None, label: str) -> None:
    p = preset(method, model)
    assert quant_bits(p.model) == bits
    assert quantization(p.model) == label


@pytest.mark.parametrize(("method", "model", "bits", "label"), QUANTIZED)
def test_every_reader_of_the_quantization_agrees(
    method: str, model: dict, bits: int | None, label: str
) -> None:
    p = preset(method, model)
    assert model_load(p).quant_bits == bits  # what the run loads
    assert make_plan(p, H200).quant == label  # what the estimator sizes
    assert p.quantized == (bits is not None)  # what doctor asks
    refused = [key for key, _ in p.hardware_problems(cuda=False)]  # what the CLI refuses
    assert bool(refused) == (bits is not None)


def test_model_load_carries_the_loader_arguments() -> None:
    p = preset(
        "qlora",
        {
            "revision": "v1",
            "trust_remote_code": True,
            "allow_pickle_weights": True,
            "dtype": "float16",
            "attn_implementation": "eager",
            "bnb_4bit_use_double_quant": False,
        },
    )
    load = model_load(p)
    assert (load.name_or_path, load.revision, load.dtype, load.attention) == (
        QWEN_05B,
        "v1",
        "float16",
        "eager",
    )
    assert load.trust_remote_code and load.allow_pickle and not load.double_quant
    assert (load.quant_bits, load.quant_type) == (4, "nf4")


@pytest.mark.parametrize(
    ("requested", "cuda", "bf16", "expected"),
    [
        ("auto", False, True, "float32"),
        ("auto", True, True, "bfloat16"),
        ("auto", True, False, "float16"),
        ("float16", False, True, "float16"),
        ("bfloat16", True, False, "bfloat16"),
    ],
)
def test_compute_dtype(requested: str, cuda: bool, bf16: bool, expected: str) -> None:
    assert compute_dtype(requested, cuda=cuda, bf16=lambda: bf16) == expected


def test_compute_dtype_asks_for_bf16_only_for_auto_on_a_gpu() -> None:
    def never() -> bool:
        raise AssertionError("bf16 support asked for")

    assert compute_dtype("float16", cuda=True, bf16=never) == "float16"
    assert compute_dtype("auto", cuda=False, bf16=never) == "float32"


@pytest.mark.parametrize("requested", ["auto", "bfloat16", "float16", "float32"])
def test_every_reader_of_the_compute_dtype_agrees(requested: str) -> None:
    torch = pytest.importorskip("torch")
    from engine.models.loading import select_dtype

    p = preset(model={"dtype": requested})
    for gpu in (None, H200, T4):
        expected = compute_dtype(requested, cuda=gpu is not None, bf16=lambda g=gpu: g.bf16)
        assert make_plan(p, gpu).dtype == expected
    assert select_dtype(requested, "cpu") == getattr(
        torch, compute_dtype(requested, cuda=False, bf16=bool)
    )


@pytest.mark.parametrize(
    ("method", "dtype", "cuda", "expected"),
    [
        ("full", "float16", True, Precision("float32", "float16", grad_scaler=True)),
        ("full", "bfloat16", True, Precision("bfloat16", None, grad_scaler=False)),
        ("lora", "bfloat16", True, Precision("bfloat16", "bfloat16", grad_scaler=False)),
        ("qlora", "float16", True, Precision("float16", "float16", grad_scaler=True)),
        ("lora", "float32", True, Precision("float32", None, grad_scaler=False)),
        ("full", "float16", False, Precision("float16", None, grad_scaler=False)),
        ("lora", "bfloat16", False, Precision("bfloat16", None, grad_scaler=False)),
    ],
)
def test_precision(method: str, dtype: str, cuda: bool, expected: Precision) -> None:
    assert precision(method, dtype, cuda=cuda) == expected


def test_precision_label_names_autocast_and_loss_scaling() -> None:
    assert precision("full", "float16", cuda=True).label == "float16 with loss scaling"
    assert precision("lora", "bfloat16", cuda=True).label == "bfloat16"
    assert precision("full", "float32", cuda=False).label == "float32"


def test_the_estimate_keeps_fp16_weights_of_a_full_cpu_run_in_fp16() -> None:
    # The run keeps fp32 master weights only on a GPU; the estimator once counted them on the
    # CPU too, and so sized a float16 full fine-tune on the CPU at twice its weights.
    p = preset("full", {"dtype": "float16"})
    n = make_plan(p, None).shape.param_count()
    assert memory(make_plan(p, None)).weights == pytest.approx(n * 2 / GIB, abs=1e-3)
    assert memory(make_plan(p, T4)).weights == pytest.approx(n * 4 / GIB, abs=1e-3)


def test_uses_gpu() -> None:
    assert uses_gpu(preset(), gpu_present=True)
    assert not uses_gpu(preset(), gpu_present=False)
    assert not uses_gpu(preset(use_cpu=True), gpu_present=True)


def test_every_reader_of_use_cpu_agrees() -> None:
    on_cpu = preset("qlora", use_cpu=True)
    assert not uses_gpu(on_cpu, gpu_present=True)
    assert make_plan(on_cpu, None).gpu is None
    assert not estimate(on_cpu, H200).on_gpu  # the estimator sizes it against RAM
    assert on_cpu.hardware_problems(cuda=True)  # 4-bit loading is refused there
    assert not preset("qlora").hardware_problems(cuda=True)


def test_uses_fsdp_and_the_launch_check_agree() -> None:
    from engine.parallel.sharded import check_launch

    assert uses_fsdp(preset("full"))
    assert not uses_fsdp(preset("full", fsdp=False))
    assert not uses_fsdp(preset("lora"))
    with pytest.raises(ConfigError, match="FSDP"):
        check_launch(preset("full", optim="adamw_8bit"))
    check_launch(preset("full", optim="adamw_8bit", fsdp=False))  # DDP: allowed
    check_launch(preset("lora", optim="adamw_8bit"))


@pytest.mark.parametrize(
    ("asked", "cuda", "adapter", "distributed", "expected"),
    [
        (None, True, True, False, None),  # auto: by the layer call's work
        (None, True, False, False, False),  # unset: adapters only
        (True, True, False, False, True),
        (True, False, True, False, False),  # a CUDA device only
        (True, True, True, True, False),  # DDP: autograd's own accumulation
        (None, True, True, True, False),
        (False, True, True, False, False),
    ],
)
def test_graphs_wanted(
    asked: bool | None, cuda: bool, adapter: bool, distributed: bool, expected: bool | None
) -> None:
    got = graphs_wanted(asked, cuda=cuda, uses_adapter=adapter, distributed=distributed)
    assert got is expected


@pytest.mark.parametrize("asked", [None, True, False])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_every_reader_of_cuda_graphs_agrees(
    asked: bool | None, method: str, tmp_path: Path
) -> None:
    from engine.core.events import LogLine, RecordingSink
    from engine.train.run import Run

    p = preset(method, gradient_checkpointing=True, cuda_graphs=asked)
    for gpu in (None, H200):
        want = graphs_wanted(asked, cuda=gpu is not None, uses_adapter=p.uses_adapter)
        assert make_plan(p, gpu).cuda_graphs is want  # the estimator
    sink = RecordingSink()
    run = Run(p, sink, runs_root=tmp_path)
    try:
        run.device = "cuda"
        assert run._cuda_graphs() is graphs_wanted(asked, cuda=True, uses_adapter=p.uses_adapter)
        run.dist = object()  # several processes: off, with a warning where it was asked for
        assert run._cuda_graphs() is False
        warned = [e for e in sink.of_type(LogLine) if "cuda_graphs" in e.text]
        assert len(warned) == (1 if asked else 0)
    finally:
        run.dist = None
        if run.dir_sink is not None:
            run.dir_sink.close()
        if run.lock is not None:
            run.lock.release()


def test_offload_activations() -> None:
    assert offload_activations(None, cuda=True)
    assert offload_activations(True, cuda=True)
    assert not offload_activations(False, cuda=True)
    assert not offload_activations(True, cuda=False)


@pytest.mark.parametrize("asked", [None, True, False])
def test_every_reader_of_offloading_agrees(asked: bool | None) -> None:
    for checkpointing in (True, False):
        p = preset(gradient_checkpointing=checkpointing, activation_offloading=asked)
        for gpu in (None, H200):
            expected = checkpointing and offload_activations(asked, cuda=gpu is not None)
            assert make_plan(p, gpu).offload == expected


def test_micro_batch() -> None:
    assert micro_batch(preset(per_device_train_batch_size=3)) == 3
    auto = preset(per_device_train_batch_size="auto")
    assert micro_batch(auto) == CPU_AUTO_MICRO_BATCH
    assert micro_batch(auto, lambda: (16, 1)) == 16
    assert micro_batch(auto, lambda: None) == 1  # not even 1 fits: start at 1 all the same
    assert micro_batch(preset(per_device_train_batch_size=3), lambda: (16, 1)) == 3


def test_every_reader_of_the_micro_batch_agrees() -> None:
    auto = preset(per_device_train_batch_size="auto", max_steps=5)
    expected = micro_batch(auto, lambda: recommend_micro_batch(auto, H200))
    assert estimate(auto, H200).micro_batch == expected
    assert train_settings(
        auto,
        micro_batch=expected,
        device="cuda",
        amp_dtype=None,
        use_grad_scaler=False,
        pad_token_id=0,
        sharded=False,
    ).auto_batch


def test_train_settings_copy_every_training_field() -> None:
    p = preset(
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        warmup_ratio=0.1,
        gradient_accumulation_steps=4,
        num_train_epochs=2.5,
        max_steps=9,
        optim="sgd",
        weight_decay=0.1,
        adam_beta1=0.8,
        adam_beta2=0.95,
        adam_epsilon=1e-6,
        max_grad_norm=0.5,
        logging_steps=2,
        per_device_eval_batch_size=3,
        save_steps=7,
        save_total_limit=2,
        seed=5,
    )
    s = train_settings(
        p,
        micro_batch=2,
        device="cuda",
        amp_dtype="bf16",
        use_grad_scaler=True,
        pad_token_id=7,
        sharded=True,
    )
    assert (s.learning_rate, s.scheduler, s.warmup_steps, s.warmup_ratio) == (
        1e-3,
        "cosine",
        3,
        0.1,
    )
    assert (s.grad_accum, s.epochs, s.max_steps, s.optim, s.weight_decay) == (4, 2.5, 9, "sgd", 0.1)
    assert (s.betas, s.eps, s.max_grad_norm) == ((0.8, 0.95), 1e-6, 0.5)
    assert (s.logging_steps, s.eval_steps, s.eval_batch, s.save_steps) == (2, None, 3, 7)
    assert (s.save_total_limit, s.seed, s.micro_batch, s.auto_batch) == (2, 5, 2, False)
    assert (s.device, s.amp_dtype, s.use_grad_scaler, s.pad_token_id, s.sharded) == (
        "cuda",
        "bf16",
        True,
        7,
        True,
    )


def test_train_settings_leave_no_field_to_its_default_by_oversight() -> None:
    # The fields train_settings does not set: the trainer's own switches, not the preset's.
    settings = inspect.getsource(derived.train_settings)
    unset = {f for f in derived.TrainSettings.__dataclass_fields__ if f"{f}=" not in settings}
    assert unset == {"chunked_loss", "defer_metrics"}


def test_run_steps() -> None:
    assert run_steps(100, micro_batch=4, grad_accum=5, epochs=2, max_steps=-1) == 10
    assert run_steps(100, micro_batch=4, grad_accum=5, epochs=0.5, max_steps=-1) == 3
    assert run_steps(100, micro_batch=4, grad_accum=5, epochs=2, max_steps=7) == 7
    assert run_steps(0, micro_batch=4, grad_accum=1, epochs=1, max_steps=-1) == 1
    assert run_steps(100, micro_batch=4, grad_accum=5, epochs=1, max_steps=-1, world=2) == 3


@pytest.mark.parametrize(("epochs", "max_steps"), [(1.0, -1), (2.5, -1), (1.0, 4)])
def test_every_reader_of_the_step_count_agrees(epochs: float, max_steps: int) -> None:
    p = preset(
        per_device_train_batch_size=4,
        gradient_accumulation_steps=3,
        num_train_epochs=epochs,
        max_steps=max_steps,
    )
    sequences = 101
    expected = run_steps(sequences, micro_batch=4, grad_accum=3, epochs=epochs, max_steps=max_steps)
    settings = train_settings(
        p,
        micro_batch=4,
        device="cpu",
        amp_dtype=None,
        use_grad_scaler=False,
        pad_token_id=0,
        sharded=False,
    )
    assert total_steps(sequences, settings) == expected  # the trainer
    lengths = DatasetLengths(
        source="x",
        rows=sequences,
        measured_rows=sequences,
        train_lengths=(64,) * sequences,
        train_sequences=sequences,
        longest=64,
        truncated=0,
    )
    assert estimate(p, H200, lengths=lengths).total_steps == expected  # the measured estimate
    assert estimate(p, H200, dataset_rows=sequences).total_steps == expected  # from the counts


def test_dataset_prep_fits_prepare_dataset() -> None:
    from engine.data import prepare_dataset

    p = Preset.model_validate(
        {"dataset": {"max_rows": 9, "val_size": 0.2, "packing": True}, "training": {"seed": 3}}
    )
    prep = dataset_prep(p)
    parameters = inspect.signature(prepare_dataset).parameters
    assert set(prep) == set(parameters) - {"tokenizer", "records"}
    assert (prep["max_rows"], prep["val_size"], prep["packing"], prep["seed"]) == (9, 0.2, True, 3)
    assert prep["max_length"] == p.model.max_seq_length and prep["fmt"] == p.dataset.format


def test_doctor_says_a_preset_needs_cuda_where_the_schema_refuses_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engine.config.presets import list_presets, load_preset
    from engine.diagnose import doctor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FINETTY_PRESETS", str(tmp_path))  # the bundled presets only
    monkeypatch.setattr(doctor, "detect_gpus", lambda: [])  # this machine has no GPU
    refused = [
        info.name
        for info in list_presets()
        if load_preset(str(info.path))[0].hardware_problems(cuda=False)
    ]
    assert refused  # the bundled QLoRA presets
    rows = [c.detail for c in doctor.check_presets() if c.detail.startswith("need a CUDA GPU")]
    assert rows == [f"need a CUDA GPU: {', '.join(refused)}"]
