"""Any OpenAI-compatible chat-completions endpoint as a backend, streaming.

The transcript is sent as chat messages (``Context.messages``): the system prompt, then what
the runtime injected as ``user`` and what the model wrote as ``assistant``. Text deltas are
passed on as they arrive. When the runtime interrupts, it closes this generator; the
``finally`` closes the HTTP stream, so the server sees the client go and stops generating.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

from openai import APIError, AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from agent_worker.errors import BackendError
from agent_worker.model import Context


@dataclass
class OpenAIChatBackend:
    client: AsyncOpenAI
    model: str
    temperature: float = 0.0
    max_tokens: int = 512
    name: str = "openai"

    @classmethod
    def create(cls, *, model: str, base_url: str | None = None, api_key: str | None = None,
               **options: Any) -> OpenAIChatBackend:
        """A client for ``base_url`` (OpenAI's API when None). A local server usually needs
        no key: a placeholder is sent when neither ``api_key`` nor OPENAI_API_KEY is set."""
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        return cls(AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0), model, **options)

    def _message(self, error: APIError) -> str:
        """The client's summary hides what the server said ("Error code: 400"); add its body."""
        detail = f" ({error.body})" if error.body else ""
        return f"{self.model!r}: {error}{detail}"

    async def stream(self, context: Context) -> AsyncGenerator[str, None]:
        messages = cast(list[ChatCompletionMessageParam], context.messages())
        try:
            response = await self.client.chat.completions.create(
                model=self.model, messages=messages, stream=True,
                temperature=self.temperature, max_tokens=self.max_tokens)
        except APIError as error:
            raise BackendError(self._message(error)) from error
        try:
            async for chunk in response:
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
        except APIError as error:
            raise BackendError(self._message(error)) from error
        finally:
            await response.close()
