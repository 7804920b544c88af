"""The training run behind ``specgate train`` (``lab.training.sft``): the configuration, the
model and data made ready, the transformers ``Trainer`` around them, and what a run leaves in
its directory (``metrics.json``, ``loss.png``, the merged ``final/``). The Trainer's callbacks
(progress bar, time budget) are in ``lab.training.sft_callbacks``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich import progress as bar
from rich.console import Console

from agent_worker.local import weights
from lab.training import sft_data
from lab.training.sft_callbacks import RichProgress, Session, TimeBudget, as_callback

# Llama, Qwen, Mistral and SmolLM name their projections alike.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainingError(Exception):
    """A fine-tuning run that cannot start; the message says what to change."""


@dataclass(frozen=True)
class SftConfig:
    data: Path
    model: Path
    out: Path
    lora: bool = True
    epochs: float = 1.0
    max_steps: int = -1
    lr: float | None = None  # None: 2e-4 with LoRA, 2e-5 full
    batch_size: int = 1
    grad_accum: int = 8
    max_length: int = 2048
    eval_data: Path | None = None
    resume: bool = False
    seed: int = 0
    device: str | None = None
    log_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 100
    warmup: float = 0.03  # a fraction of the steps
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    threads: int | None = None  # CPU threads of torch; None: torch's default
    bf16: bool | None = None  # bfloat16 autocast; None: where the device computes it natively
    time_budget_min: float | None = None  # stop (then evaluate and export) after this long

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 2e-5)


@dataclass(frozen=True)
class SftResult:
    final: Path
    metrics: dict[str, Any]


def _device(requested: str | None, threads: int | None) -> str:
    import torch

    if threads:
        # On a CPU shared with other work, fewer threads can be several times faster: torch's
        # OpenMP workers wait for each other at every operation, and one descheduled worker
        # stalls them all (measured: 10x at 1 thread vs 2 on a loaded 2-core machine).
        torch.set_num_threads(threads)
    where = weights.pick_device(requested)
    if where.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {where}: CUDA is not available on this machine")
    if where not in ("cpu", "cuda"):
        raise TrainingError(f"--device {where!r}: use cpu or cuda (choose the GPU with "
                            "CUDA_VISIBLE_DEVICES)")
    return where


def _check_resume(config: SftConfig) -> None:
    found = list(config.out.glob("checkpoint-*")) if config.out.is_dir() else []
    if config.resume and not found:
        raise TrainingError(f"--resume: no checkpoint in {config.out} to continue from")
    if not config.resume and found:
        raise TrainingError(f"{config.out} already holds checkpoints: pass --resume to "
                            "continue that run, or choose another --out")


def load_model(config: SftConfig, device: str) -> tuple[Any, Any]:
    """The model to train (wrapped in a LoRA adapter unless full) and its tokenizer."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its tqdm bars (loading, saving) would break ours
    model, tokenizer = weights.load(config.model, device=device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked: any token will do
    set_seed(config.seed)  # the adapter's initial weights
    if not config.lora:
        return model, tokenizer
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in config.lora_targets if t in names]
    if not targets:
        raise TrainingError(f"none of the LoRA target modules {list(config.lora_targets)} is in "
                            "this model: name its projections with --lora-targets")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.05,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tokenizer


def _arguments(config: SftConfig, device: str, evaluate: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(config.out), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, warmup_steps=config.warmup,
        lr_scheduler_type="cosine", logging_steps=config.log_steps, logging_first_step=True,
        eval_strategy="steps" if evaluate else "no", eval_steps=config.eval_steps,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        seed=config.seed, data_seed=config.seed, bf16=use_bf16(config.bf16, device),
        use_cpu=device == "cpu",
        disable_tqdm=True, report_to="none", dataloader_pin_memory=device == "cuda",
        include_num_input_tokens_seen="non_padding")


def use_bf16(requested: bool | None, device: str) -> bool:
    """bfloat16 autocast when asked, or by default where the hardware has bf16 arithmetic: a
    CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX (measured on an AVX512-BF16
    EPYC core: a LoRA step on SmolLM2-135M at 1,024 tokens, 9.5 s against 20 s in fp32, the
    same loss to 3 decimals). The weights stay fp32; only the matrix products run in bf16."""
    import torch

    if device == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if requested and not native and device == "cuda":
        raise TrainingError("--bf16: this GPU has no bfloat16 support")
    return native if requested is None else requested


def run(config: SftConfig, *, console: Console | None = None,
        callbacks: Sequence[Any] = ()) -> SftResult:
    """Fine-tune, evaluate, write ``metrics.json``, ``loss.png`` and the merged ``final/``."""
    console = console or Console()
    device, model, tokenizer, (train_set, eval_set) = _prepare(config, console)
    progress = as_callback(RichProgress)(console)
    budget = as_callback(TimeBudget)(config.time_budget_min)
    trainer, session = _trainer(config, device, model, tokenizer, (train_set, eval_set),
                                [progress, budget, *callbacks])
    try:
        output = trainer.train(resume_from_checkpoint=True if config.resume else None)
    finally:
        progress.close()  # also when training stops on an error: the live bar must end
    if eval_set is not None and not _evaluated_at(trainer.state, trainer.state.global_step):
        trainer.evaluate()
    final = export(trainer.model, tokenizer, config.out / "final")
    metrics = _metrics(config, trainer.state, output.metrics, session, (train_set, eval_set))
    metrics["stopped_by_time_budget"] = budget.stopped
    metrics["bf16"] = trainer.args.bf16
    if budget.stopped:
        console.print(f"[yellow]stopped by the time budget ({config.time_budget_min:g} min) at "
                      f"step {trainer.state.global_step} of {trainer.state.max_steps}[/]")
    (config.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    plot(metrics, config.out / "loss.png", console)
    console.print(f"[green]trained[/] {metrics['steps']} steps; model in {final}")
    return SftResult(final, metrics)


def _prepare(config: SftConfig, console: Console) -> tuple[str, Any, Any, tuple[Any, Any]]:
    """The device, model, tokenizer and encoded (train, eval) sets. The data, the run
    directory and the model path are checked first, before anything heavy is loaded."""
    train_file, eval_file = sft_data.data_files(config.data, config.eval_data)
    _check_resume(config)
    files = [(train_file, sft_data.read_samples(train_file))]
    if eval_file is not None:
        files.append((eval_file, sft_data.read_samples(eval_file)))
    weights.source(config.model)
    device = _device(config.device, config.threads)
    model, tokenizer = load_model(config, device)
    train_set, *evals = _encode(console, tokenizer, config.max_length, *files)
    sets = (train_set, evals[0] if evals else None)
    _describe(console, config, device, *sets)
    return device, model, tokenizer, sets


def _encode(console: Console, tokenizer: Any, max_length: int,
            *files: tuple[Path, list[sft_data.Sample]]) -> list[Any]:
    """Each file's samples rendered, tokenized and masked (milliseconds a sample)."""
    with bar.Progress(bar.TextColumn("encoding"), bar.BarColumn(), bar.MofNCompleteColumn(),
                      bar.TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("encoding", total=sum(len(s) for _, s in files))
        return [sft_data.encode_samples(samples, tokenizer, max_length, path,
                                        lambda: progress.advance(task))
                for path, samples in files]


def _trainer(config: SftConfig, device: str, model: Any, tokenizer: Any,
             sets: tuple[Any, Any], callbacks: list[Any]) -> tuple[Any, Session]:
    from transformers import PrinterCallback, Trainer

    train_set, eval_set = sets
    session = as_callback(Session)()
    trainer = Trainer(model=model, args=_arguments(config, device, eval_set is not None),
                      train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=sft_data.Collator(tokenizer.pad_token_id),
                      processing_class=tokenizer, callbacks=[*callbacks, session])
    trainer.remove_callback(PrinterCallback)  # our progress bar reports the losses
    return trainer, session


def _describe(console: Console, config: SftConfig, device: str, train_set: Any,
              eval_set: Any) -> None:
    mode = f"LoRA r={config.lora_r}" if config.lora else "full"
    console.print(f"{mode} fine-tuning of {config.model} on {device}: {len(train_set)} samples "
                  f"({train_set.tokens} tokens, {train_set.learned} learned)"
                  + (f", eval on {len(eval_set)}" if eval_set is not None else ", no eval set"))
    for name, data in (("train", train_set), ("eval", eval_set)):
        if data is not None and (data.truncated or data.dropped):
            console.print(f"[yellow]{name}: {data.truncated} samples truncated to "
                          f"{config.max_length} tokens, {data.dropped} dropped (no assistant "
                          "token within --max-length)[/]")


def _evaluated_at(state: Any, step: int) -> bool:
    return any("eval_loss" in entry and entry.get("step") == step for entry in state.log_history)


def export(model: Any, tokenizer: Any, target: Path) -> Path:
    """A plain transformers directory (any LoRA adapter merged) with the tokenizer, written
    aside and moved in place, so a crash never leaves a half-written ``final``."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    _stop_at_end_of_turn(model, tokenizer)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target


def _stop_at_end_of_turn(model: Any, tokenizer: Any) -> None:
    """The model was taught to end its turn with the template's marker: make plain
    ``generate`` stop there too (some configurations only name the end-of-text token)."""
    marker = tokenizer.convert_tokens_to_ids(sft_data.chat_format(tokenizer).end_of_turn)
    config = model.generation_config
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else \
        [config.eos_token_id] if config.eos_token_id is not None else []
    if isinstance(marker, int) and marker not in stops:
        config.eos_token_id = [*stops, marker]


def _metrics(config: SftConfig, state: Any, final: dict[str, Any], session: Session,
             sets: tuple[Any, Any]) -> dict[str, Any]:
    train_set, eval_set = sets
    history = state.log_history
    runtime = final.get("train_runtime") or 0.0
    steps = state.global_step - session.start_step
    tokens = state.num_input_tokens_seen - session.start_tokens
    return {
        "steps": state.global_step,
        "train_loss": [{"step": e["step"], "loss": e["loss"], "lr": e.get("learning_rate")}
                       for e in history if "loss" in e],
        "eval_loss": [{"step": e["step"], "loss": e["eval_loss"]}
                      for e in history if "eval_loss" in e],
        "data": {"train": train_set.figures(),
                 "eval": eval_set.figures() if eval_set is not None else None},
        # This train() call only: a resumed run's figures do not count the earlier steps.
        "speed": {"runtime_s": runtime, "steps": steps, "tokens": tokens,
                  "steps_per_s": steps / runtime if runtime else None,
                  "tokens_per_s": tokens / runtime if runtime else None},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }


def plot(metrics: dict[str, Any], path: Path, console: Console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no loss plot[/]")
        return
    figure, axes = pyplot.subplots(figsize=(7, 4))
    train = metrics["train_loss"]
    axes.plot([e["step"] for e in train], [e["loss"] for e in train], label="train")
    evals = metrics["eval_loss"]
    if evals:
        axes.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="eval")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (assistant tokens)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
