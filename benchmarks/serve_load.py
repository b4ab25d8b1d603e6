"""`lmlab serve` under load: 1, 16 and 64 concurrent streaming clients on loopback, against the engine direct.

The server runs as its own process (`lmlab serve`, as a user runs it); the
clients are one asyncio process with httpx, each in a loop: send a streamed
completion (a world question, `max_tokens` new tokens, `ignore_eos` so every
request costs the same), read it to `[DONE]`, send the next. New requests stop
after `--seconds`; the ones in flight finish and are counted. Per level:
aggregate tokens/s, time to first token and time between tokens (p50, p99),
requests completed and failed. The reference is the same model's engine in
this process, generating the same number of prompts at once with the same
settings (`Engine.generate`: one static batch, no HTTP, no JSON): the server's
overhead is the ratio. Continuous batching is the 16-client throughput over
the 1-client throughput (the target: at least 4x).

    python benchmarks/serve_load.py --checkpoint runs/quickstart/checkpoint --seconds 20

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lmlab import cbuild

PROMPTS = ["Question: Where was", "Question: What did", "Question: Which company", "Question: In which year",
           "Question: Where does", "Question: Who", "Question: What is the", "Question: When"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def stream_once(host: str, port: int, body: bytes) -> tuple[int, list[float], int]:
    """One streamed request on its own connection: (status, each chunk's arrival time, completion tokens).

    A minimal HTTP/1.1 client on asyncio streams: on a 2-core machine the load generator shares the CPU with
    the server, and httpx's per-chunk work would be measured as the server's."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(body), body))
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            chunked = chunked or line.lower().startswith(b"transfer-encoding: chunked")
        times, tokens, buffer = [], 0, b""
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = (await reader.readexactly(size + 2))[:-2]  # the chunk, less its CRLF
            else:
                data = await reader.read(65536)
                if not data:
                    break
            now = time.perf_counter()
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for e in events:
                if b'"usage": {' in e or b'"usage":{' in e:
                    tokens = json.loads(e[6:])["usage"]["completion_tokens"]
                elif e.startswith(b"data: {"):
                    times.append(now)
        return status, times, tokens
    finally:
        writer.close()


async def client(host: str, port: int, model: str, k: int, stop_at: float, max_tokens: int, out: dict) -> None:
    i = k
    while time.perf_counter() < stop_at:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 1.0,
                "seed": i, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
        i += 1000
        t0 = time.perf_counter()
        try:
            status, times, tokens = await stream_once(host, port, json.dumps(body).encode())
        except (OSError, ValueError, asyncio.IncompleteReadError):
            out["failed"] += 1
            continue
        if status != 200 or tokens != max_tokens or not times:
            out["failed"] += 1
            continue
        out["ttft"].append(times[0] - t0)
        out["itl"] += [b - a for a, b in zip(times, times[1:])]
        if tokens > 1:
            out["tpot"].append((times[-1] - times[0]) / (tokens - 1))
        out["tokens"] += tokens
        out["completed"] += 1


async def load(url: str, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` clients in a loop for `seconds`; the requests in flight then finish and are counted."""
    host, port = url.removeprefix("http://").split(":")
    out = {"ttft": [], "itl": [], "tpot": [], "tokens": 0, "completed": 0, "failed": 0}
    t0 = time.perf_counter()
    await asyncio.gather(*[client(host, int(port), model, k, t0 + seconds, max_tokens, out) for k in range(clients)])
    wall = time.perf_counter() - t0
    return {"clients": clients, "wall_s": round(wall, 2), "requests_completed": out["completed"],
            "requests_failed": out["failed"], "tokens_per_s": round(out["tokens"] / wall, 1),
            "ttft_p50_ms": _ms(pct(out["ttft"], 0.5)), "ttft_p99_ms": _ms(pct(out["ttft"], 0.99)),
            "tpot_p50_ms": _ms(pct(out["tpot"], 0.5)), "tpot_p99_ms": _ms(pct(out["tpot"], 0.99)),
            "itl_p50_ms": _ms(pct(out["itl"], 0.5)), "itl_p99_ms": _ms(pct(out["itl"], 0.99))}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 2)


def direct(checkpoint: str, clients: int, seconds: float, max_tokens: int, threads: int) -> dict:
    """The engine in-process, on the server's thread count: batches of `clients` prompts, one after another,
    for about `seconds`."""
    import torch

    from lmlab.infer.engine import Engine
    from lmlab.infer.sampling import SamplingParams

    torch.set_num_threads(threads)
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(clients)]
    params = [SamplingParams(temperature=1.0, max_new_tokens=max_tokens, seed=k, ignore_eos=True)
              for k in range(clients)]
    engine.generate(prompts, params)  # warm-up
    tokens, t0, batches = 0, time.perf_counter(), []
    while time.perf_counter() - t0 < seconds or not batches:
        b0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        batches.append(time.perf_counter() - b0)
        tokens += sum(len(c.token_ids) for o in outs for c in o.completions)
    wall = time.perf_counter() - t0
    return {"clients": clients, "tokens_per_s": round(tokens / wall, 1),
            "per_token_ms": round(1000 * statistics.median(batches) / max_tokens, 3)}


def start_server(checkpoint: str, port: int, threads: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("lmlab")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "lmlab.cli"]),
           "serve", checkpoint, "--port", str(port), "--device", "cpu", "--max_waiting", "256",
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"lmlab serve exited: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("lmlab serve did not answer /health within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/quickstart/checkpoint")
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="the model's threads (0: lmlab serve's default)")
    args = ap.parse_args()
    from lmlab.serve.run import engine_threads

    threads = engine_threads(args.threads)
    levels = [int(c) for c in args.clients.split(",")]
    port = free_port()
    proc = start_server(args.checkpoint, port, threads)
    url = f"http://127.0.0.1:{port}"
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        asyncio.run(load(url, model, 1, 2.0, args.max_tokens))  # warm-up
        served = []
        for c in levels:
            served.append(asyncio.run(load(url, model, c, args.seconds, args.max_tokens)))
            print(json.dumps(served[-1]), file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    engine = [direct(args.checkpoint, c, args.seconds / 2, args.max_tokens, threads) for c in levels]
    by = {s["clients"]: s for s in served}
    figures = {
        "cpu": cbuild.cpu_info()["model"], "cpu_flags": cbuild.cpu_info()["flags"], "cores": os.cpu_count(),
        "engine_threads": threads, "checkpoint": args.checkpoint,
        "max_tokens": args.max_tokens,
        "seconds": args.seconds, "served": served, "engine_direct": engine,
        "batching_gain_16_over_1": round(by[16]["tokens_per_s"] / by[1]["tokens_per_s"], 2)
        if 16 in by and 1 in by else None,
        "served_over_direct": {str(s["clients"]): round(s["tokens_per_s"] / e["tokens_per_s"], 3)
                               for s, e in zip(served, engine)},
        "all_completed": all(s["requests_failed"] == 0 for s in served),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
