"""Streaming chat completions through the official `openai` SDK, as an LLM app's users run them.

Usage: openai_completions.py BASE_URL COUNT MAX_TOKENS INTERVAL_MS TIMEOUT_S

Starts COUNT concurrent streaming completions, prints `streaming` once every one of them has
received its first content token (so the caller can terminate a pod mid-answer), then one JSON
object with each answer's content, chunk count, finish reason and error (if the SDK raised one).
"""

import asyncio
import json
import sys
import time

from openai import AsyncOpenAI


async def one(client, i, max_tokens, interval_ms, started):
    t0 = time.monotonic()
    content, chunks, finish, error = [], 0, None, None
    try:
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": f"question {i}"}],
            stream=True,
            max_tokens=max_tokens,
            extra_body={"interval_ms": interval_ms},
        )
        async for chunk in stream:
            chunks += 1
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta and choice.delta.content:
                    content.append(choice.delta.content)
                    started.set()
                if choice.finish_reason:
                    finish = choice.finish_reason
    except Exception as e:  # noqa: BLE001 - every SDK failure is a result to report
        error = f"{type(e).__name__}: {e}"
    return {
        "i": i,
        "content": "".join(content),
        "chunks": chunks,
        "finish": finish,
        "error": error,
        "secs": round(time.monotonic() - t0, 3),
    }


async def main():
    base_url, count, max_tokens, interval_ms, timeout = sys.argv[1:6]
    client = AsyncOpenAI(
        base_url=base_url, api_key="test", timeout=float(timeout), max_retries=0
    )
    events = [asyncio.Event() for _ in range(int(count))]
    tasks = [
        asyncio.create_task(one(client, i, int(max_tokens), int(interval_ms), events[i]))
        for i in range(int(count))
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), float(timeout))
    print("streaming", flush=True)
    results = await asyncio.gather(*tasks)
    print(json.dumps({"answers": results}), flush=True)


asyncio.run(main())
