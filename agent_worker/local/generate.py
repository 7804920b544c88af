"""Token-level generation with a KV cache kept across steps (docs/architecture.md#agent-worker:
"local model: the KV cache is kept, only the new tokens are prefilled").

``KVState`` owns one transformers ``DynamicCache`` and the token ids whose keys and values it
holds: the prompt of the last step and what the model generated and was fed back. A new step
brings a new rendering of the whole transcript; ``plan`` finds how much of the cache still
holds, ``prefill`` crops the cache there and runs only the rest, ``feed`` runs one generated
token. Everything here is synchronous and must run on one thread at a time (the backend runs
it on a single worker thread, so a forward pass cut short by an interruption finishes, and
keeps the books right, before the next step touches the cache).

Matching a new rendering against the cache. The runtime rewrites the end of the transcript
(it may drop a half-written action and append ``</think_interrupted>``, the template's
``<|im_end|>`` and an injected message), so the match is found on text: the longest common
prefix of the cached text and the new rendering. That prefix is mapped to the last *added*
token (``<|im_start|>``, ``<|im_end|>`` …) lying wholly inside it — the anchor. Only the text
from the anchor on is tokenized, and its ids are compared with the cached ones from the anchor.
Why the anchor and not simply the prefix's last token: a tokenizer splits the text at added
tokens first and tokenizes each piece on its own, so the ids from an anchor on are exactly
those a tokenization of the whole rendering would give; cutting anywhere else may split a
token that the whole text would merge (``,`` + ``</``), and the model may have generated a
spelling that is not the tokenizer's own. Comparing ids after the anchor drops just such
tokens, so a resumed step sees exactly the ids a fresh run would — same greedy output — while
the window tokenized is only the last message and what was appended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from agent_worker.errors import BackendError

Anchor = tuple[int, int, int]  # an added token: (token index, char start, char end)


@dataclass(frozen=True)
class Plan:
    """How a new rendering meets the cache: keep ``reuse`` cached tokens, prefill ``rest``."""

    text: str
    reuse: int
    rest: tuple[int, ...]
    rest_anchors: tuple[Anchor, ...]  # the added tokens of ``rest`` (index in ``rest``)


@dataclass
class KVState:
    model: Any
    tokenizer: Any
    cache: Any = None
    ids: list[int] = field(default_factory=list)  # tokens whose keys/values are cached
    text: str = ""  # what those tokens spell (a prefix of it once a partial byte is fed)
    # The added tokens among the prefilled ``ids`` (not generated ones: the generated tokens
    # before them may not be the tokenizer's own spelling, see the module docstring).
    anchors: list[Anchor] = field(default_factory=list)
    generation: int = 0  # bumped by every prefill: a stale step's feed is refused

    def __post_init__(self) -> None:
        self.added = frozenset(self.tokenizer.added_tokens_decoder)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0)
                                 or 1 << 30)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next step prefills its whole rendering."""
        self.cache = DynamicCache(config=self.model.config)
        self.ids, self.text, self.anchors = [], "", []

    # Planning -----------------------------------------------------------------------------

    def plan(self, text: str) -> Plan:
        common = common_prefix(self.text, text)
        anchor, start = 0, 0
        for index, at, end in reversed(self.anchors):
            if end <= common:
                anchor, start = index, at
                break
        window = self.tokenizer(text[start:], add_special_tokens=False,
                                return_offsets_mapping=True)
        ids = list(window["input_ids"])
        same = common_prefix(self.ids[anchor:], ids)
        if not ids:
            raise BackendError("the rendered context is empty")
        if same == len(ids):  # nothing new: run the last token again for its logits
            same -= 1
        rest = ids[same:]
        spans = window["offset_mapping"]
        rest_anchors = tuple((i - same, start + spans[i][0], start + spans[i][1])
                             for i in range(same, len(ids)) if ids[i] in self.added)
        return Plan(text, anchor + same, tuple(rest), rest_anchors)

    # Running the model --------------------------------------------------------------------

    def prefill(self, plan: Plan) -> torch.Tensor:
        """Crop the cache to ``plan.reuse`` tokens, run ``plan.rest``; the next-token logits."""
        total = plan.reuse + len(plan.rest)
        if total >= self.max_positions:
            raise BackendError(f"the context is {total} tokens: the model takes at most "
                               f"{self.max_positions} positions")
        self.generation += 1
        if plan.reuse == 0:
            self.reset()
        else:
            crop_to(self.cache, plan.reuse)
        del self.ids[plan.reuse:]
        self.anchors = [a for a in self.anchors if a[0] < plan.reuse]
        logits = self._forward(plan.rest)
        self.anchors += [(plan.reuse + i, at, end) for i, at, end in plan.rest_anchors]
        self.ids += plan.rest
        self.text = plan.text
        return logits

    def feed(self, generation: int, token: int, text: str) -> torch.Tensor | None:
        """Run one generated token (``text``: what it added to the decoded output); None when
        a newer step has prefilled since (this step is over)."""
        if generation != self.generation:
            return None
        logits = self._forward((token,))
        self.ids.append(token)
        self.text += text
        return logits

    def room(self) -> int:
        """Tokens that can still be fed before the model's last position."""
        return self.max_positions - len(self.ids) - 1

    def _forward(self, ids: tuple[int, ...]) -> torch.Tensor:
        """Run ``ids`` after the cache; the last position's logits. A pass that fails midway
        may have extended some layers and not others: the cache is dropped."""
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([ids], device=self.model.device),
                                 cache=self.cache, use_cache=True, logits_to_keep=1)
        except BaseException:
            self.reset()
            raise
        logits: torch.Tensor = out.logits[0, -1].float()
        return logits


def crop_to(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of ``cache`` (``DynamicCache.crop`` takes the
    number of positions to drop, as a negative number, in this transformers)."""
    drop = cache.get_seq_length() - length
    if drop > 0:
        cache.crop(-drop)


def common_prefix(a: Any, b: Any) -> int:
    """Length of the common prefix of two sequences (strings or lists), in chunks so long
    equal runs compare at C speed."""
    n, i, step = min(len(a), len(b)), 0, 256
    while i < n:
        j = min(n, i + step)
        if a[i:j] == b[i:j]:
            i = j
            continue
        while a[i] == b[i]:
            i += 1
        return i
    return n


class Detokenizer:
    """Incremental decoding: the text each new token adds, correct across tokens that are
    only part of a character (byte-level BPE) and tokens whose spelling depends on the one
    before. Decodes a short sliding window, not the whole output, per token."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here
        self.read = 0  # text up to here has been returned

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # an incomplete character: wait for the bytes that complete it
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False))
