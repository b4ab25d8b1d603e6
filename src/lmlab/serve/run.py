"""`lmlab serve CKPT`: the OpenAI-compatible server on a checkpoint, until Ctrl-C."""

from __future__ import annotations

import ipaddress
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lmlab.errors import LmlabError
from lmlab.infer.engine import Engine
from lmlab.rundir import DEFAULT_CHECKPOINT


@dataclass
class ServeConfig:
    POSITIONAL: ClassVar[tuple[str, ...]] = ("checkpoint",)

    checkpoint: str = DEFAULT_CHECKPOINT
    """Checkpoint directory to serve (also the first argument: `lmlab serve CKPT`)."""
    host: str = "127.0.0.1"
    """Address to listen on. Only this machine can connect by default; 0.0.0.0 opens it to the network."""
    port: int = 8000
    """TCP port (0: any free port)."""
    api_key: str | None = None
    """Key every /v1 request must send as 'Authorization: Bearer KEY' (default: $LMLAB_API_KEY; unset: none)."""
    model_name: str | None = None
    """The model id clients ask for (default: the run's directory name, e.g. 'quickstart' or 'sft')."""
    max_waiting: int = 64
    """Requests that may queue for the batch; one more is answered 429."""
    max_rows: int = 256
    """Samples decoded together at most (a request's n samples are n rows)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above it)."""
    device: str = "auto"
    """Device to run on: 'auto' (the GPU if there is one), 'cpu', 'cuda', ..."""
    weights: str = "fp32"
    """Weights for inference: 'fp32', 'bf16', or 'int8'."""
    backend: str = "auto"
    """Decode steps: 'torch', 'native' or 'auto' (see `lmlab generate --help`)."""
    threads: int = 0
    """Threads for the model (0: one less than the CPU's cores, at least 1). The server's own thread needs a
    core: when the decode step's threads take them all, each step waits on a thread the OS has put aside for
    the server, and a 2-core machine serves 16 clients at a third of the speed (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        for name in ("max_waiting", "max_rows", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise LmlabError(f"threads must be >= 0 (0 = one less than the cores), got {self.threads}")
        if not 0 <= self.port < 65536:
            raise LmlabError(f"port must be in [0, 65535], got {self.port}")


def engine_threads(threads: int) -> int:
    """`threads`, or (0) one less than the cores this process may use, at least 1."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def served_name(checkpoint: str) -> str:
    """'runs/quickstart/checkpoint' -> 'quickstart'; 'runs/x/sft/checkpoint' -> 'sft'; else the directory."""
    p = Path(checkpoint).resolve()
    return p.parent.name if p.name == "checkpoint" and p.parent.name else p.name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(cfg: ServeConfig) -> dict[str, Any]:
    """Serve until interrupted; returns what was served."""
    try:
        import uvicorn

        from lmlab.serve.app import api_key_from_env, build_app
    except ImportError as e:
        raise LmlabError(f"lmlab serve needs its extra: pip install 'lmlab[serve]' ({e})") from None
    key = api_key_from_env(cfg.api_key)
    if not _is_loopback(cfg.host) and key is None:
        warnings.warn(f"serving on {cfg.host} without an API key: anyone who can reach this port can use it",
                      stacklevel=2)
    torch.set_num_threads(engine_threads(cfg.threads))
    engine = Engine.from_checkpoint(cfg.checkpoint, cfg.device, cfg.weights, cfg.backend)
    name = cfg.model_name or served_name(cfg.checkpoint)
    app = build_app(engine, name, key, cfg.max_waiting, cfg.max_rows, cfg.max_body_bytes)
    print(f"lmlab serve: model {name!r} on http://{cfg.host}:{cfg.port} (playground at /, OpenAI API at /v1, "
          f"metrics at /metrics){'; API key required' if key else ''}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    m = app.state.metrics
    return {"model": name, "url": f"http://{cfg.host}:{cfg.port}", "steps": app.state.scheduler.steps,
            "prompt_tokens": int(m.prompt_tokens._value.get()),
            "completion_tokens": int(m.completion_tokens._value.get())}
