"""``specgate train``: supervised fine-tuning of a causal LM on the SFT data of
``specgate data make`` (tool-calling tasks played as timed streams, written as chat samples;
see ``lab.training``), LoRA or full.

- **The transformers ``Trainer``**, not a hand-written loop: it gives resumable checkpoints
  (weights or adapter, optimizer, scheduler, RNG, data position), gradient accumulation with
  the loss normalized over all learned tokens of the accumulated batch, bf16 autocast and
  interval evaluation. Ours is around it: the masked dataset (``sft_data``), a rich progress
  bar instead of tqdm, ``metrics.json``, ``loss.png`` and the export.
- **Weights through ``weights.load``** (a directory or a GGUF file, never a hub): bf16 on
  CUDA, float32 on the CPU, so one command trains SmolLM2-135M on a laptop and 3B on a GPU.
- **LoRA by default** (``peft``) on the attention and MLP projections of Llama/Qwen-style
  models. The export merges it: ``out/final`` is a plain transformers directory, read by
  ``weights.load`` and the local backend as any other model.
- **Checkpoints live in ``--out``**; ``--resume`` continues from the last one, and without it
  a directory holding checkpoints is refused, so two runs are never silently mixed.

This module is the command; the run is ``lab.training.sft_run`` and the Trainer's callbacks
``lab.training.sft_callbacks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agent_worker.local import weights
from lab.training import sft_data
from lab.training.sft_run import (
    DEFAULT_TARGETS,
    SftConfig,
    SftResult,
    TrainingError,
    export,
    load_model,
    plot,
    run,
    use_bf16,
)

# The command, and the run's names it has always offered (tests and callers use ``sft.run``).
__all__ = ["DEFAULT_TARGETS", "SftConfig", "SftResult", "TrainingError", "app", "export",
           "load_model", "plot", "run", "train", "use_bf16"]

Opt = typer.Option


def train(
    data: Annotated[Path, Opt(help="SFT data: a .jsonl file, or a directory holding "
                                   "train.jsonl (e.g. DATA/async).")],
    model: Annotated[Path, Opt(help="Base model: a transformers directory or a .gguf file.")],
    out: Annotated[Path, Opt(help="Run directory: checkpoints, metrics.json, loss.png, "
                                  "final/.")],
    lora: Annotated[bool, Opt("--lora/--full", help="LoRA adapter (merged at export) or "
                                                    "every weight.")] = True,
    epochs: Annotated[float, Opt(help="Passes over the data.")] = 1.0,
    max_steps: Annotated[int, Opt(help="Optimizer steps; overrides --epochs when > 0.")] = -1,
    lr: Annotated[float | None, Opt(help="Peak learning rate [default: 2e-4 LoRA, 2e-5 "
                                         "full].")] = None,
    batch_size: Annotated[int, Opt(help="Samples per device batch.")] = 1,
    grad_accum: Annotated[int, Opt(help="Batches per optimizer step.")] = 8,
    max_length: Annotated[int, Opt(help="Tokens per sample; longer ones are cut.")] = 2048,
    eval_data: Annotated[Path | None, Opt(help="Held-out .jsonl [default: test.jsonl beside "
                                               "train.jsonl].")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the last checkpoint in "
                                                 "--out.")] = False,
    seed: Annotated[int, Opt(help="Seed of the adapter, the shuffling and dropout.")] = 0,
    device: Annotated[str | None, Opt(help="cpu or cuda [default: cuda when present].")
                      ] = None,
    log_steps: Annotated[int, Opt(help="Log the train loss every N steps.")] = 10,
    eval_steps: Annotated[int, Opt(help="Evaluate every N steps (and at the end).")] = 100,
    save_steps: Annotated[int, Opt(help="Checkpoint every N steps.")] = 100,
    lora_r: Annotated[int, Opt(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, Opt(help="LoRA scale numerator.")] = 32,
    lora_targets: Annotated[str, Opt(help="Comma-separated module names for LoRA.")
                            ] = ",".join(DEFAULT_TARGETS),
    threads: Annotated[int | None, Opt(help="CPU threads for torch (1 is fastest on a busy "
                                            "machine).")] = None,
    bf16: Annotated[bool | None, Opt("--bf16/--fp32", help="bfloat16 autocast [default: where "
                                     "the GPU or CPU computes bf16 natively].")] = None,
    time_budget: Annotated[float | None, Opt(help="Minutes: stop there (checkpoint, eval, "
                                                  "export) if not done.")] = None,
) -> None:
    """Fine-tune a causal LM on SFT data (loss on the assistant spans only)."""
    targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    config = SftConfig(data=data, model=model, out=out, lora=lora, epochs=epochs,
                       max_steps=max_steps, lr=lr, batch_size=batch_size,
                       grad_accum=grad_accum, max_length=max_length, eval_data=eval_data,
                       resume=resume, seed=seed, device=device, log_steps=log_steps,
                       eval_steps=eval_steps, save_steps=save_steps, lora_r=lora_r,
                       lora_alpha=lora_alpha, lora_targets=targets, threads=threads,
                       bf16=bf16, time_budget_min=time_budget)
    console = Console()
    try:
        run(config, console=console)
    except (TrainingError, sft_data.TrainingDataError, weights.WeightsError) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)  # paths stay whole
        raise typer.Exit(2) from error


app = typer.Typer(add_completion=False, help="Fine-tuning (also `specgate train`).")
app.command()(train)

if __name__ == "__main__":
    app()
