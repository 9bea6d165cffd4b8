"""Client-side cost and concurrency of the ``openai`` backend, against stub servers that answer at once.

    python benchmarks/openai_client.py [--requests 2000] [--n 4] [--concurrency 1,16,64,128]
                                       [--hold-ms 50] [--tiny] [--json PATH]

Each stub is a separate process (an asyncio HTTP/1.1 server with keep-alive) that answers
``/v1/completions`` with a minimal valid body (``n`` choices, ``usage``), so the client process does
nothing but client work. Runs:

* ``instant``: one stub, ``--requests`` distinct prompts (``n`` choices each) at each
  ``--concurrency``; then two stubs (two base URLs) at concurrency 64 per server;
* ``held``: stubs that hold every request ``--hold-ms`` before answering, at concurrency 64 on one
  server and 64 per server on two, to show the requests really are in flight together (the server's
  peak in-flight count) and how close the throughput comes to the ideal ``concurrency / hold``;
* ``--tiny``: optional, ``deliberate serve``'s server over an untrained tiny model (real sampling,
  serialised on the server; slow) at concurrency 1 and 64, with the number of retried attempts.

Columns: wall seconds of ``generate``, requests/s, peak requests in flight at the server(s) (read
but not yet answered; an instant stub answers each request as soon as it is read, so there it stays
1 and the peak of open client connections, in brackets, shows the concurrency), the servers' busy seconds (union of handler intervals), client overhead per
request ``(wall - server busy) / requests`` in ms, the client process's CPU ms per request, and the
share of requests each server got. Printed as a markdown table plus a one-line summary;
``--json PATH`` writes every row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time

import httpx

# ------------------------------------------------------------------------------------- stub server


class _State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.inflight = 0
        self.peak_inflight = 0
        self.open_conns = 0
        self.peak_conns = 0
        self.busy_s = 0.0
        self._busy_since: float | None = None

    def start(self) -> None:
        if self.inflight == 0:
            self._busy_since = time.perf_counter()
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)

    def end(self) -> None:
        self.inflight -= 1
        self.requests += 1
        if self.inflight == 0 and self._busy_since is not None:
            self.busy_s += time.perf_counter() - self._busy_since
            self._busy_since = None


def _response(status: int, obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def _serve(port_out, hold_s: float) -> None:
    state = _State()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.open_conns += 1
        state.peak_conns = max(state.peak_conns, state.open_conns)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                length = 0
                for line in lines[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if path.endswith(b"/stats"):
                    writer.write(_response(200, {"requests": state.requests, "peak_inflight": state.peak_inflight,
                                                 "peak_connections": state.peak_conns, "busy_s": state.busy_s}))
                elif path.endswith(b"/reset"):
                    state.reset()
                    state.open_conns = state.peak_conns = 1
                    writer.write(_response(200, {}))
                elif method == b"GET":
                    writer.write(_response(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]}))
                else:
                    state.start()
                    req = json.loads(body)
                    if hold_s:
                        await asyncio.sleep(hold_s)
                    n = int(req.get("n", 1))
                    choices = [{"index": i, "text": " 42", "finish_reason": "stop", "logprobs": None} for i in range(n)]
                    writer.write(_response(200, {"id": "cmpl-stub", "object": "text_completion", "model": "stub",
                                                 "choices": choices,
                                                 "usage": {"prompt_tokens": 8, "completion_tokens": 2 * n,
                                                           "total_tokens": 8 + 2 * n}}))
                    state.end()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            state.open_conns -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], file=port_out, flush=True)
    async with server:
        await server.serve_forever()


class Stub:
    """A stub server in a child process."""

    def __init__(self, hold_s: float = 0.0):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--stub", str(hold_s)],
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stats(self) -> dict:
        return httpx.get(self.base_url + "/stats").json()

    def reset(self) -> None:
        httpx.post(self.base_url + "/reset")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -------------------------------------------------------------------------------------------- runs


def run(label: str, stubs: list[Stub], requests: int, n: int, concurrency: int, hold_s: float = 0.0) -> dict:
    from deliberate.models.openai import OpenAIBackend
    from deliberate.models.sampling import SamplingParams

    backend = OpenAIBackend([s.base_url for s in stubs], model="stub", concurrency=concurrency, timeout=60)
    params = SamplingParams(n=n, seed=0, max_tokens=16)
    backend.generate(["warm-up"], params)  # SSL context, imports
    for s in stubs:
        s.reset()
    prompts = [f"Problem {i}: what is {i} * {i % 97}?\n" for i in range(requests)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = backend.generate(prompts, params)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert len(out) == requests and all(len(row) == n for row in out)
    stats = [s.stats() for s in stubs]
    busy = max(st["busy_s"] for st in stats)  # the servers work in parallel
    got = [st["requests"] for st in stats]
    assert sum(got) == requests, got
    return {
        "run": label, "servers": len(stubs), "concurrency_per_server": concurrency, "hold_ms": hold_s * 1000,
        "requests": requests, "n": n, "wall_s": round(wall, 3), "req_per_s": round(requests / wall, 1),
        "server_peak_inflight": [st["peak_inflight"] for st in stats],
        "server_peak_connections": [st["peak_connections"] for st in stats],
        "server_busy_s": round(busy, 3),
        "overhead_ms_per_req": round((wall - busy) / requests * 1000, 3),
        "client_cpu_ms_per_req": round(cpu / requests * 1000, 3),
        "split": [round(g / requests, 3) for g in got],
        "ideal_req_per_s": round(concurrency * len(stubs) / hold_s, 1) if hold_s else None,
    }


_TINY_SERVER = """
from deliberate.models.server import make_server
from deliberate.models.tiny import TinyBackend, load_or_init_tiny
model, tok = load_or_init_tiny(None)
server = make_server(TinyBackend(model=model, tokenizer=tok, device="cpu"), port=0, model_name="tiny")
print("deliberate serve: at", server.base_url, flush=True)
server.serve_forever()
"""


def run_tiny(requests: int, n: int, concurrencies: list[int]) -> list[dict]:
    """``deliberate serve``'s server over an untrained default-size tiny model, in a child process."""
    from deliberate.models.openai import OpenAIBackend
    from deliberate.models.sampling import SamplingParams

    proc = subprocess.Popen([sys.executable, "-c", _TINY_SERVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    rows = []
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        params = SamplingParams(n=n, seed=0, max_tokens=8)
        for c in concurrencies:
            backend = OpenAIBackend(url, concurrency=c, timeout=120)
            backend.generate(["warm-up"], params)
            prompts = [f"{i}+{i % 9}=" for i in range(requests)]
            cpu0, t0 = time.process_time(), time.perf_counter()
            out = backend.generate(prompts, params)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            assert all(len(row) == n for row in out)
            retries = backend.server_stats()[0]["failures"]
            rows.append({"run": f"deliberate serve (tiny), {retries} retries", "servers": 1, "concurrency_per_server": c, "hold_ms": 0,
                         "requests": requests, "n": n, "wall_s": round(wall, 3),
                         "req_per_s": round(requests / wall, 1), "server_peak_inflight": None,
                         "server_peak_connections": None, "server_busy_s": None, "overhead_ms_per_req": None,
                         "client_cpu_ms_per_req": round(cpu / requests * 1000, 3), "split": [1.0],
                         "ideal_req_per_s": None})
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| run | servers | conc/server | requests x n | wall s | req/s | server peak in flight (connections) | "
            "server busy s | overhead ms/req | client CPU ms/req | split |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        fmt = (lambda v: "-" if v is None else ("/".join(str(x) for x in v) if isinstance(v, list) else str(v)))
        req_s = fmt(r["req_per_s"]) + (f" (ideal {r['ideal_req_per_s']:g})" if r["ideal_req_per_s"] else "")
        label = r["run"] + (f", hold {r['hold_ms']:g} ms" if r["hold_ms"] else "")
        peak = fmt(r["server_peak_inflight"])
        if r["server_peak_connections"]:
            peak += f" ({fmt(r['server_peak_connections'])})"
        out.append(f"| {label} | {r['servers']} | {r['concurrency_per_server']} | {r['requests']} x {r['n']} | "
                   f"{r['wall_s']} | {req_s} | {peak} | {fmt(r['server_busy_s'])} | "
                   f"{fmt(r['overhead_ms_per_req'])} | {fmt(r['client_cpu_ms_per_req'])} | "
                   f"{'/'.join(f'{x:.0%}' for x in r['split'])} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--concurrency", default="1,16,64,128")
    ap.add_argument("--hold-ms", type=float, default=50.0)
    ap.add_argument("--tiny", action="store_true", help="also run against `deliberate serve` of the tiny model")
    ap.add_argument("--tiny-requests", type=int, default=16)
    ap.add_argument("--json", default=None, metavar="PATH")
    a = ap.parse_args()
    concs = [int(c) for c in a.concurrency.split(",")]

    rows = []
    one, two = Stub(), Stub()
    try:
        for c in concs:
            rows.append(run("instant", [one], a.requests, a.n, c))
        rows.append(run("instant", [one, two], a.requests, a.n, 64))
    finally:
        one.close()
        two.close()
    if a.hold_ms > 0:
        h1, h2 = Stub(a.hold_ms / 1000), Stub(a.hold_ms / 1000)
        try:
            rows.append(run("held", [h1], a.requests, a.n, 64, a.hold_ms / 1000))
            rows.append(run("held", [h1, h2], a.requests, a.n, 64, a.hold_ms / 1000))
        finally:
            h1.close()
            h2.close()
    if a.tiny:
        rows.extend(run_tiny(a.tiny_requests, a.n, [1, 64]))

    print(table(rows))
    by = {(r["run"], r["servers"], r["concurrency_per_server"]): r for r in rows}
    r64 = by.get(("instant", 1, 64))
    held = by.get(("held", 1, 64))
    split = by.get(("instant", 2, 64))
    parts = []
    if r64:
        parts.append(f"concurrency 64, instant stub: {r64['req_per_s']:g} req/s, client overhead "
                     f"{r64['overhead_ms_per_req']:g} ms/req ({r64['client_cpu_ms_per_req']:g} ms CPU)")
    if held:
        parts.append(f"held {a.hold_ms:g} ms: {held['server_peak_inflight'][0]} in flight at the server")
    if split:
        parts.append(f"2 URLs split {'/'.join(f'{x:.0%}' for x in split['split'])}")
    print("\nSummary: " + "; ".join(parts) + f".  ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}, httpx {httpx.__version__})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "httpx": httpx.__version__}, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--stub":
        try:
            asyncio.run(_serve(sys.stdout, float(sys.argv[2])))
        except KeyboardInterrupt:
            pass
    else:
        main()
