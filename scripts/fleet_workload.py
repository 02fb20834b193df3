#!/usr/bin/env python3
"""The fleet benchmark's workload (scripts/bench.sh fleet): a seeded mix of clients sent to
two gateways at random, reporting time to first token (TTFT) per request kind.

- agent sessions (model A): a long system prompt and tool definitions, a conversation that
  grows turn by turn (each turn adds the answer and a new user message), streamed;
- chat users (model B): a short system prompt, a few turns, streamed;
- embedding batches (model C): 32 inputs each, whole answers (their latency is reported).

Usage: fleet_workload.py SEED GATEWAY_ADDR[,GATEWAY_ADDR...] OUT.json [SCALE]
Only the Python standard library: http.client on threads, one per client.
"""
import http.client
import json
import random
import statistics
import sys
import threading
import time

SEED = int(sys.argv[1])
GATEWAYS = sys.argv[2].split(",")
OUT = sys.argv[3]
SCALE = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0

AGENTS, AGENT_TURNS = max(1, int(8 * SCALE)), 6
CHATS, CHAT_TURNS = max(1, int(12 * SCALE)), 4
EMBEDDERS, BATCHES = max(1, int(4 * SCALE)), 4
STAGGER_S = 10 * SCALE

results = []
lock = threading.Lock()


def words(rng, n):
    vocab = ["gateway", "ollama", "request", "token", "queue", "model", "cache", "prompt",
             "answer", "policy", "stream", "backend", "latency", "agent", "tool", "file"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def post(addr, key, path, body, stream):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=300)
    start = time.monotonic()
    c.request("POST", path, json.dumps(body),
              {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = c.getresponse()
    ttft = None
    answer = []
    if stream and r.status == 200:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            try:
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            except (ValueError, KeyError, IndexError):
                continue
            if delta and ttft is None:
                ttft = time.monotonic() - start
            answer.append(delta)
    else:
        r.read()
        ttft = time.monotonic() - start
    c.close()
    return r.status, ttft, "".join(answer), time.monotonic() - start


def record(kind, status, ttft, total):
    with lock:
        results.append({"kind": kind, "status": status, "ttft": ttft, "total": total})


def agent(i):
    rng = random.Random(SEED * 1000 + i)
    time.sleep(rng.uniform(0, STAGGER_S))
    system = f"You are coding agent {i}. " + words(rng, 7000)  # ~45k characters
    tools = [{"type": "function", "function": {"name": f"tool_{t}", "description": words(rng, 40),
              "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}}}}
             for t in range(12)]
    converse(rng, "agent", i, system, AGENT_TURNS, 60, (0.5, 1.5), {"tools": tools})


def chat(i):
    rng = random.Random(SEED * 2000 + i)
    time.sleep(rng.uniform(0, STAGGER_S))
    system = "You are a helpful assistant. " + words(rng, 60)
    converse(rng, "chat", i, system, CHAT_TURNS, 25, (1.0, 3.0), {})


def converse(rng, kind, i, system, turns, user_words, think, extra):
    """A streamed conversation of `turns` turns on `kind`-model with `kind`-key-i, each turn
    adding the answer and a new user message, `think` seconds (uniform) between turns."""
    messages = [{"role": "system", "content": system}]
    for _ in range(turns):
        messages.append({"role": "user", "content": words(rng, user_words)})
        body = {"model": f"{kind}-model", "stream": True, "messages": messages, **extra}
        status, ttft, answer, total = post(rng.choice(GATEWAYS), f"{kind}-key-{i:04d}",
                                           "/v1/chat/completions", body, True)
        record(kind, status, ttft, total)
        messages.append({"role": "assistant", "content": answer})
        time.sleep(rng.uniform(*think))


def embedder(i):
    rng = random.Random(SEED * 3000 + i)
    time.sleep(rng.uniform(0, STAGGER_S))
    for b in range(BATCHES):
        body = {"model": "embed-model", "input": [words(rng, 30) for _ in range(32)]}
        status, ttft, _, total = post(rng.choice(GATEWAYS), f"embed-key-{i:04d}",
                                      "/v1/embeddings", body, False)
        record("embed", status, ttft, total)
        time.sleep(rng.uniform(1.0, 4.0))


def main():
    threads = [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
    threads += [threading.Thread(target=chat, args=(i,)) for i in range(CHATS)]
    threads += [threading.Thread(target=embedder, args=(i,)) for i in range(EMBEDDERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    def summary(kinds):
        ok = [r["ttft"] for r in results if r["kind"] in kinds and r["status"] == 200
              and r["ttft"] is not None]
        ok.sort()
        if not ok:
            return {"n": 0}
        p99 = ok[min(len(ok) - 1, int(round(0.99 * (len(ok) - 1))))]
        return {"n": len(ok), "mean_s": round(statistics.fmean(ok), 3),
                "p50_s": round(ok[len(ok) // 2], 3), "p99_s": round(p99, 3)}

    out = {
        "seed": SEED,
        "elapsed_s": round(elapsed, 1),
        "requests": len(results),
        "failed": sum(1 for r in results if r["status"] != 200),
        "statuses": sorted({r["status"] for r in results}),
        "ttft_chat_and_agents": summary({"agent", "chat"}),
        "ttft_agents": summary({"agent"}),
        "ttft_chat": summary({"chat"}),
        "embed_latency": summary({"embed"}),
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


main()
