"""Drives the deployed chain with the official OpenAI Python SDK, as a chat UI would.

Usage: openai_client.py BASE_URL API_KEY CA_FILE SOURCE_IP MODE [MODEL]
MODE: chat (non-stream), stream (stream with timings). Prints one JSON object.
"""
import json
import sys
import time

import httpx
import openai


def main() -> None:
    base_url, key, ca, source_ip, mode = sys.argv[1:6]
    model = sys.argv[6] if len(sys.argv) > 6 else "qwen3:32b"
    transport = httpx.HTTPTransport(verify=ca, local_address=source_ip)
    client = openai.OpenAI(
        base_url=base_url,
        api_key=key,
        http_client=httpx.Client(transport=transport, verify=ca),
        max_retries=0,
    )
    messages = [{"role": "user", "content": "hello from the sdk"}]
    out = {}
    try:
        if mode == "chat":
            r = client.chat.completions.create(model=model, messages=messages)
            out = {
                "ok": True,
                "content": r.choices[0].message.content,
                "model": r.model,
                "finish_reason": r.choices[0].finish_reason,
                "total_tokens": r.usage.total_tokens,
            }
        elif mode == "stream":
            start = time.monotonic()
            times, parts, finish = [], [], None
            stream = client.chat.completions.create(
                model=model, messages=messages, stream=True,
                stream_options={"include_usage": True},
            )
            usage = None
            for chunk in stream:
                if chunk.usage:
                    usage = chunk.usage.total_tokens
                for c in chunk.choices:
                    if c.delta.content:
                        times.append(time.monotonic() - start)
                        parts.append(c.delta.content)
                    if c.finish_reason:
                        finish = c.finish_reason
            out = {
                "ok": True,
                "content": "".join(parts),
                "first_content_s": times[0] if times else None,
                "last_content_s": times[-1] if times else None,
                "finish_reason": finish,
                "total_tokens": usage,
            }
        else:
            raise SystemExit(f"unknown mode {mode}")
    except openai.APIStatusError as e:
        out = {"ok": False, "status": e.status_code, "body": e.response.text}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
