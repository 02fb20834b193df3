"""Drives the gateway with the official, unmodified client libraries, as real users do.

Usage: clients.py BASE_URL API_KEY MODE MODEL [CA_FILE SOURCE_IP]
MODE: ollama (the ollama client: chat, stream, list, show, embed, generate),
      ollama-timing (one native stream, timed; with CA_FILE and SOURCE_IP, for the TLS chain),
      openai (embeddings, completions, responses: each streamed and not),
      anthropic (messages, streamed and not; the key in x-api-key),
      agents (what coding agents rely on: no retry of a wrong key, count_tokens, Anthropic's
      model list, a failed Responses stream through the SDK's helper, a prompt over the
      limit read as a context overflow).
Prints one JSON object with what each call returned; an error is printed, never raised.
"""
import json
import sys


def run_ollama(base, key, model):
    import ollama

    client = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"})
    out = {}
    r = client.chat(model=model, messages=[{"role": "user", "content": "hello ollama"}])
    out["chat"] = {"content": r.message.content, "model": r.model, "eval_count": r.eval_count}
    parts = []
    for chunk in client.chat(
        model=model, messages=[{"role": "user", "content": "stream please"}], stream=True
    ):
        parts.append(chunk.message.content)
        done = chunk.done
    out["stream"] = {"content": "".join(parts), "done": done, "chunks": len(parts)}
    out["list"] = sorted(m.model for m in client.list().models)
    out["show"] = {"template": client.show(model).template is not None}
    e = client.embed(model=model, input=["a", "b"])
    out["embed"] = {"count": len(e.embeddings), "dims": len(e.embeddings[0])}
    g = client.generate(model=model, prompt="complete this", stream=False)
    out["generate"] = {"response": g.response, "done": g.done}
    out["ps"] = sorted(m.model for m in client.ps().models)
    return out


def run_ollama_timing(base, key, model, ca, source_ip):
    """A native stream through the deployed chain (TLS, a chosen source address), timed."""
    import time

    import httpx
    import ollama

    transport = httpx.HTTPTransport(verify=ca, local_address=source_ip)
    client = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"},
                           transport=transport, verify=ca)
    start = time.monotonic()
    times, parts = [], []
    for chunk in client.chat(model=model, messages=[{"role": "user", "content": "a b c"}],
                             stream=True):
        if chunk.message.content:
            times.append(time.monotonic() - start)
            parts.append(chunk.message.content)
    return {"content": "".join(parts), "first_content_s": times[0], "last_content_s": times[-1]}


def run_openai(base, key, model):
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    out = {}
    # The SDK asks for base64 embeddings by default and decodes them itself.
    e = client.embeddings.create(model=model, input=["hello", "world"])
    out["embeddings"] = {"count": len(e.data), "dims": len(e.data[0].embedding), "model": e.model}
    c = client.completions.create(model=model, prompt="say it", suffix="end", max_tokens=20)
    out["completions"] = {"text": c.choices[0].text, "model": c.model,
                          "tokens": c.usage.completion_tokens}
    texts = []
    for chunk in client.completions.create(model=model, prompt="stream it", stream=True):
        texts.extend(ch.text for ch in chunk.choices)
    out["completions_stream"] = "".join(texts)
    r = client.responses.create(model=model, input="respond to me", instructions="Be brief.")
    out["responses"] = {"text": r.output_text, "model": r.model,
                        "output_tokens": r.usage.output_tokens}
    deltas, completed = [], None
    for event in client.responses.create(model=model, input="stream a response", stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response.usage.output_tokens
    out["responses_stream"] = {"text": "".join(deltas), "output_tokens": completed}
    return out


def run_anthropic(base, key, model):
    import anthropic

    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
    out = {}
    m = client.messages.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "hello claude"}]
    )
    out["messages"] = {"text": m.content[0].text, "model": m.model,
                       "output_tokens": m.usage.output_tokens, "stop": m.stop_reason}
    with client.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "stream a message"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    out["messages_stream"] = {"text": text, "output_tokens": final.usage.output_tokens}
    return out


def run_agents(base, key, model, words="0"):
    import anthropic
    import httpx
    import openai

    out = {}
    # A wrong key: the SDKs retry 401 by default unless x-should-retry says no.
    for name, make, call in (
        ("anthropic", lambda h: anthropic.Anthropic(base_url=base, api_key="wrong-key-000000",
                                                    max_retries=3, http_client=h),
         lambda c: c.messages.create(model=model, max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}])),
        ("openai", lambda h: openai.OpenAI(base_url=base + "/v1", api_key="wrong-key-000000",
                                           max_retries=3, http_client=h),
         lambda c: c.chat.completions.create(model=model,
                                             messages=[{"role": "user", "content": "hi"}])),
    ):
        sent = []
        # Each SDK takes a client of the HTTP library it was built on (newer Anthropic SDKs
        # use httpx2, a fork with the same API).
        lib = httpx
        if name == "anthropic":
            try:
                import httpx2 as lib
            except ImportError:
                pass
        h = lib.Client(event_hooks={"request": [lambda r: sent.append(r.url.path)]})
        try:
            call(make(h))
            out[f"wrong_key_{name}"] = {"status": 200, "requests": len(sent)}
        except Exception as e:
            out[f"wrong_key_{name}"] = {"status": getattr(e, "status_code", None),
                                        "requests": len(sent)}
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
    n = client.messages.count_tokens(
        model=model, system="Be brief.",
        messages=[{"role": "user", "content": "count the tokens of these words please"}])
    out["count_tokens"] = n.input_tokens
    out["anthropic_models"] = [{"id": m.id, "type": m.type, "display_name": m.display_name}
                               for m in client.models.list().data]
    oc = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    failed, types = None, []
    with oc.responses.stream(model="test/cut", input="cut me short please") as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.failed":
                failed = {"message": event.response.error.message,
                          "sequence_number": event.sequence_number}
    out["responses_failed"] = failed
    out["responses_events"] = types
    try:
        oc.chat.completions.create(model=model, messages=[
            {"role": "user", "content": "word " * int(words)}])
        out["too_long"] = None
    except openai.BadRequestError as e:
        out["too_long"] = {"code": e.code, "message": e.message}
    return out


def main() -> None:
    base, key, mode, model = sys.argv[1:5]
    extra = sys.argv[5:]
    runners = {"ollama": run_ollama, "openai": run_openai, "anthropic": run_anthropic,
               "ollama-timing": run_ollama_timing, "agents": run_agents}
    try:
        out = {"ok": True, **runners[mode](base, key, model, *extra)}
    except Exception as e:  # reported, so the Rust test shows what the client said
        status = getattr(e, "status_code", None)
        body = getattr(getattr(e, "response", None), "text", None)
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "status": status, "body": body}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
