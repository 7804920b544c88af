"""SFT samples as token ids and labels: reading the JSON lines of ``specgate data make``,
checking them, and masking the loss to what the model itself must learn to write.

Masks come from the tokenizer's own chat template, the rendering the local backend feeds the
model at inference. The whole conversation is rendered to text once, each message's content is
located in that text in order (a cursor walks through system, user and assistant contents, so
a user message repeating an assistant's words cannot be mistaken for it), and the character
ranges to learn are mapped to tokens with the tokenizer's offsets. A token is labelled only when
it lies entirely inside a range: a token straddling the edge of an assistant span also carries
template or runtime text, which the model must not learn to write.

What is learned (the contract in docs/architecture.md#agent-worker and the data format): every
assistant content plus the end-of-turn marker that follows it in the template (``<|im_end|>`` for
ChatML), so the model learns to stop after its action; for a message the runtime cut off
(``"interrupted": true``), the content without a trailing ``</think_interrupted>`` and without the
end-of-turn marker, since the runtime, not the model, wrote both.

The end-of-turn marker is found by rendering a probe conversation whose assistant content is
a sentinel: the first token after the sentinel is the marker. A template that does not copy
contents verbatim (trimmed ones aside; some templates drop earlier reasoning) is refused with
the sample named, rather than trained on a mask that no longer matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_worker.protocol import THINK_INTERRUPTED

IGNORE = -100  # the label torch's cross-entropy skips
_SENTINEL = "\u2063SPECGATE-SENTINEL\u2063"
_ROLES = ("user", "assistant")


class TrainingDataError(Exception):
    """Training data that is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Sample:
    id: str
    messages: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def learned(self) -> int:
        return sum(label != IGNORE for label in self.labels)


# Reading and checking ---------------------------------------------------------------------------

def data_files(data: Path, eval_data: Path | None) -> tuple[Path, Path | None]:
    """(train file, eval file or None). A directory means its ``train.jsonl``, evaluated on the
    ``test.jsonl`` beside it unless ``eval_data`` names another file."""
    if data.is_dir():
        if not (data / "train.jsonl").is_file():
            variants = [d.name for d in (data / "async", data / "sync") if d.is_dir()]
            hint = f" (name one of its variants: {', '.join(variants)})" if variants else ""
            raise TrainingDataError(f"{data} has no train.jsonl{hint}")
        beside = data / "test.jsonl"
        return data / "train.jsonl", eval_data or (beside if beside.is_file() else None)
    if not data.is_file():
        raise TrainingDataError(f"no training data at {data}: name a .jsonl file or a "
                                "directory holding train.jsonl")
    return data, eval_data


def read_samples(path: str | Path) -> list[Sample]:
    """Every sample of a JSON-lines file, checked; a bad line raises naming ``path:line``."""
    p = Path(path)
    if not p.is_file():
        raise TrainingDataError(f"no training data at {p}: expected a .jsonl file")
    samples = [_sample(p, number, line) for number, line in _lines(p)]
    if not samples:
        raise TrainingDataError(f"{p} holds no samples")
    return samples


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def _sample(path: Path, number: int, line: str) -> Sample:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise TrainingDataError(f"{where}: not valid JSON ({error.msg} at column "
                                f"{error.colno})") from error
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise TrainingDataError(f"{where}: expected an object with a \"messages\" list")
    messages = data["messages"]
    problem = _check_messages(messages)
    if problem:
        raise TrainingDataError(f"{where}: {problem}")
    return Sample(str(data.get("id", where)), tuple(messages))


def _check_messages(messages: list[Any]) -> str | None:
    """Why the messages break the format (roles, contents, interruption marks), or None."""
    start = 1 if messages and isinstance(messages[0], dict) and \
        messages[0].get("role") == "system" else 0
    if len(messages) <= start:
        return "no user or assistant message"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"message {index} needs a string \"content\""
        role = message.get("role")
        expected = "system" if index < start else _ROLES[(index - start) % 2]
        if role != expected:
            return f"message {index} has role {role!r}, expected {expected!r} (roles " \
                   "alternate user/assistant after the system message)"
        if not message["content"]:
            return f"message {index} ({role}) is empty"
        problem = _check_interruption(index, message)
        if problem:
            return problem
    if len(messages) == start + 1:
        return "no assistant message: nothing to learn"
    return None


def _check_interruption(index: int, message: dict[str, Any]) -> str | None:
    interrupted = message.get("interrupted", False)
    if not isinstance(interrupted, bool):
        return f"message {index}: \"interrupted\" must be true or false"
    if interrupted and message["role"] != "assistant":
        return f"message {index}: only assistant messages can be interrupted"
    body = message["content"]
    if interrupted and body.endswith(THINK_INTERRUPTED):
        body = body[:-len(THINK_INTERRUPTED)]
    if message["role"] == "assistant" and THINK_INTERRUPTED in body:
        return (f"message {index}: {THINK_INTERRUPTED} is written by the runtime and may only "
                "end a message marked \"interrupted\": true")
    return None


# The chat template ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatFormat:
    """What the masking needs of a tokenizer: the end-of-turn text after assistant content."""

    end_of_turn: str


def chat_format(tokenizer: Any) -> ChatFormat:
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingDataError("the tokenizer has no chat template: fine-tune an instruct "
                                "model, whose template the local backend also uses")
    probe = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    at = text.find(_SENTINEL)
    if at < 0:
        raise TrainingDataError("the chat template does not copy assistant contents verbatim")
    after = text[at + len(_SENTINEL):].lstrip(" ")
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if not ids:
        raise TrainingDataError("the chat template writes nothing after an assistant message: "
                                "no end-of-turn marker to learn")
    return ChatFormat(end_of_turn=tokenizer.decode(ids[:1]))


# Masking ----------------------------------------------------------------------------------------

def learned_spans(sample: Sample, text: str, fmt: ChatFormat) -> list[tuple[int, int]]:
    """Character ranges of ``text`` (the rendered sample) the model must learn to write."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(sample.messages):
        content = message["content"]
        at = text.find(content, cursor)
        if at < 0 and content != content.strip():  # templates that trim contents (Llama 3)
            content = content.strip()
            at = text.find(content, cursor)
        if at < 0:
            raise TrainingDataError(f"sample {sample.id!r}: the chat template changes message "
                                    f"{index} ({message['role']}); its content is not found "
                                    "verbatim in the rendering, so it cannot be masked")
        cursor = at + len(content)
        if message["role"] != "assistant":
            continue
        if message.get("interrupted"):
            end = cursor - (len(THINK_INTERRUPTED) if content.endswith(THINK_INTERRUPTED) else 0)
            spans.append((at, end))
        elif text.startswith(fmt.end_of_turn, cursor):
            spans.append((at, cursor + len(fmt.end_of_turn)))
        else:
            raise TrainingDataError(f"sample {sample.id!r}: message {index} is not followed by "
                                    f"the end-of-turn marker {fmt.end_of_turn!r}")
    return spans


def encode(sample: Sample, tokenizer: Any, fmt: ChatFormat, max_length: int) -> Encoded:
    """Token ids of the rendered sample and their labels (IGNORE outside learned spans),
    truncated to ``max_length`` tokens from the right (the system prompt must stay whole)."""
    text = tokenizer.apply_chat_template(list(_plain(sample.messages)), tokenize=False)
    spans = learned_spans(sample, text, fmt)
    # The template already wrote any begin-of-sequence token it wants.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [token if _inside(start, end, spans) else IGNORE
              for token, (start, end) in zip(ids, enc["offset_mapping"], strict=True)]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def _plain(messages: tuple[dict[str, Any], ...]) -> Iterator[dict[str, str]]:
    """Only role and content reach the template (``interrupted`` is ours)."""
    for message in messages:
        yield {"role": message["role"], "content": message["content"]}


def _inside(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return end > start and any(a <= start and end <= b for a, b in spans)


# Dataset and batches ----------------------------------------------------------------------------

@dataclass
class EncodedSet:
    """A file's samples ready for the Trainer, with what truncation did to them."""

    items: list[Encoded]
    truncated: int
    dropped: int  # nothing left to learn after truncation

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        item = self.items[index]
        return {"input_ids": item.input_ids, "labels": item.labels}

    @property
    def tokens(self) -> int:
        return sum(len(item.input_ids) for item in self.items)

    @property
    def learned(self) -> int:
        return sum(item.learned for item in self.items)

    def figures(self) -> dict[str, int]:
        return {"samples": len(self), "tokens": self.tokens, "learned_tokens": self.learned,
                "truncated": self.truncated, "dropped": self.dropped}


def encode_samples(samples: list[Sample], tokenizer: Any, max_length: int,
                   source: str | Path, done: Callable[[], object] | None = None) -> EncodedSet:
    """The samples encoded (``done`` is called after each one, for a progress bar)."""
    fmt = chat_format(tokenizer)
    encoded = []
    for sample in samples:
        encoded.append(encode(sample, tokenizer, fmt, max_length))
        if done is not None:
            done()
    kept = [item for item in encoded if item.learned]
    if not kept:
        raise TrainingDataError(f"{source}: no sample keeps an assistant token within "
                                f"--max-length {max_length}")
    return EncodedSet(kept, sum(item.truncated for item in encoded), len(encoded) - len(kept))


def encode_file(path: str | Path, tokenizer: Any, max_length: int) -> EncodedSet:
    return encode_samples(read_samples(path), tokenizer, max_length, path)


@dataclass(frozen=True)
class Collator:
    """Right-pads a batch to its longest sample; padding is masked and never learned."""

    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        ids, labels, mask = [], [], []
        for item in batch:
            gap = width - len(item["input_ids"])
            ids.append(item["input_ids"] + [self.pad_id] * gap)
            labels.append(item["labels"] + [IGNORE] * gap)
            mask.append([1] * len(item["input_ids"]) + [0] * gap)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}
