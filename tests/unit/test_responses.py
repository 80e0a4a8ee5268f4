"""``json_array_response``: a small answer whole, a large one streamed in chunks, the same JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.responses import StreamingResponse

from enforcement.api import responses


def body_of(response: Any) -> tuple[list[bytes], bool]:
    """The chunks a response sends, and whether it was streamed."""
    if not isinstance(response, StreamingResponse):
        return [bytes(response.body)], False

    async def collect() -> list[bytes]:
        return [bytes(chunk) async for chunk in response.body_iterator]  # type: ignore[arg-type]

    return asyncio.run(collect()), True


@pytest.mark.parametrize("count", [0, 1, 3, 40, 400])
def test_the_answer_is_the_array_whole_or_in_chunks(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responses, "STREAM_AFTER_BYTES", 2_000)
    monkeypatch.setattr(responses, "CHUNK_BYTES", 1_000)
    items = [{"n": n, "text": "é" * (n % 7) * 20} for n in range(count)]

    chunks, streamed = body_of(responses.json_array_response("results", iter(items)))

    assert json.loads(b"".join(chunks)) == {"results": items}
    whole = len(json.dumps({"results": items}, ensure_ascii=False, separators=(",", ":")).encode())
    assert streamed == (whole > 2_000)
    if streamed:  # the first chunk is what was encoded before streaming began
        assert all(len(c) >= 1_000 for c in chunks[1:-1]) and len(chunks) < count
