"""The engine loop behind `lmlab serve`: continuous batching over one `Batch`.

One thread owns the model. Between decode steps it retires cancelled
requests and admits waiting ones (their prompts are prefilled and their rows
join the batch), then every live row draws one token and the survivors take
one decode step. So a request that arrives while others are generating starts
at the next step instead of waiting for them to finish, and concurrent
requests share each step's matrix multiplies. Requests reach the loop through
a bounded queue (`Busy` when it is full: the server answers 429); their
tokens come back to the event loop that submitted them through an
`asyncio.Queue`.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.infer.batch import Batch, Row
from lmlab.infer.sampling import SamplingParams


class Busy(Exception):
    """The waiting queue is full."""


@dataclass
class Piece:
    """One streamed token of one choice, with what the client may ask about it."""

    prompt_index: int
    index: int
    text: str
    token_id: int
    logprob: float | None
    top: dict[int, float] | None
    finish_reason: str | None
    stop_token: bool
    """The token was a stop token: it ends the choice and is not part of its text."""


@dataclass
class Job:
    """One request: its prompts, its rows, and the queue its tokens go to."""

    prompt_ids: list[list[int]]
    rows: list[Row]
    stream: bool
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: dict[int, float] = field(default_factory=dict)
    done: bool = False
    error: BaseException | None = None


    @property
    def completion_tokens(self) -> int:
        """Tokens drawn over all choices, stop tokens included (OpenAI counts them)."""
        return sum(r.drawn for r in self.rows)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompt_ids)


class Scheduler:
    """Owns `engine` in a thread of its own; see the module docstring."""

    def __init__(self, engine: Any, metrics: Any = None, max_waiting: int = 64, max_rows: int = 256) -> None:
        self.engine, self.metrics = engine, metrics
        self.max_waiting, self.max_rows = max_waiting, max_rows
        self.batch = Batch(engine)
        self.waiting: collections.deque[Job] = collections.deque()
        self.jobs: dict[int, Job] = {}
        self.cancels: list[Job] = []
        self.cond = threading.Condition()
        self.closed = False
        self.steps = 0
        self.outbox: list[tuple[Job, Any]] = []  # what this step hands to the requests' event loops
        self.thread = threading.Thread(target=self._loop, name="lmlab-engine", daemon=True)
        self.thread.start()

    # -- called from the server's event loop ---------------------------------------------------------
    def submit(self, prompt_ids: list[list[int]], params: list[SamplingParams], stream: bool) -> Job:
        """Queue a request (one params per prompt); raises `Busy` when the queue is full."""
        job = Job(prompt_ids, [], stream, asyncio.get_running_loop())
        job.rows = self.engine.rows(prompt_ids, params, streaming=True, owner=job)
        with self.cond:
            if self.closed:
                raise Busy("the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise Busy(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(job)
            self._gauges()
            self.cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a request whose client went away: its rows leave the batch at the next step."""
        with self.cond:
            if job.done:
                return
            if job in self.waiting:
                self.waiting.remove(job)
                job.done = True
                self._gauges()
                return
            self.cancels.append(job)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=10)

    @property
    def live_rows(self) -> int:
        return self.batch.n_live

    # -- the engine thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self.cond:
                    while not (self.closed or self.waiting or self.cancels or self.batch):
                        self.cond.wait()
                    if self.closed:
                        break
                    cancels, self.cancels = self.cancels, []
                    admit = self._admissible()
                    self._gauges()
                try:
                    self._step(cancels, admit)
                except Exception as e:  # a bug must not take the server down: fail what was running
                    self._fail_all(e)
                self._flush()
        for job in list(self.jobs.values()) + list(self.waiting):
            self.outbox.append((job, RuntimeError("the server shut down")))
        self._flush()

    def _flush(self) -> None:
        """Hand this step's items to their event loops: one wake-up per loop, not one per request."""
        by_loop: dict[int, list[tuple[Job, Any]]] = {}
        for job, item in self.outbox:
            by_loop.setdefault(id(job.loop), []).append((job, item))
        self.outbox = []
        for items in by_loop.values():
            try:
                items[0][0].loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop has closed: nobody is listening
                pass

    def _admissible(self) -> list[Job]:
        """Waiting jobs, in order, whose rows fit beside the running ones (one job always fits an idle batch)."""
        admit, rows = [], self.batch.n_live
        while self.waiting:
            need = len(self.waiting[0].rows)
            if rows and rows + need > self.max_rows:
                break
            admit.append(self.waiting.popleft())
            rows += need
        return admit

    def _step(self, cancels: list[Job], admit: list[Job]) -> None:
        for job in cancels:
            if id(job) in self.jobs:
                self.batch.cancel(job)
                self._finish(job, None)
        if admit:
            try:  # one prefill for every request that arrived since the last step
                self.batch.add_groups([(job.prompt_ids, job.rows) for job in admit])
            except Exception as e:  # e.g. out of memory: these requests fail, the running ones go on
                for job in admit:
                    job.done, job.error = True, e
                    self.outbox.append((job, e))
                admit = []
        for job in admit:
            self.jobs[id(job)] = job
            if self.metrics is not None:
                self.metrics.prompt_tokens.inc(job.prompt_tokens)
            if all(r.finish is not None for r in job.rows):
                self._finish(job, None)
        if not self.batch:
            return
        with self.batch.running():
            deltas = self.batch.sample()
        self._publish(deltas)
        if self.batch:
            with self.batch.running():
                self.batch.forward()
        self.steps += 1

    def _publish(self, deltas) -> None:
        now = time.perf_counter()
        by_job: dict[int, list[Piece]] = {}
        for d in deltas:
            job: Job = d.owner
            r = job.rows[d.prompt_index * job.rows[0].params.n + d.index]  # engine.rows' order
            self._timing(job, d.prompt_index * 1_000 + d.index, now)
            if job.stream:
                stop_token = r.drawn > len(r.ids)
                lp = r.logprobs[-1] if r.logprobs and len(r.logprobs) == r.drawn else None
                top = r.tops[-1] if r.tops and len(r.tops) == r.drawn else None
                by_job.setdefault(id(job), []).append(
                    Piece(d.prompt_index, d.index, d.text, d.token_id, lp, top, d.finish_reason, stop_token))
        if self.metrics is not None:
            self.metrics.completion_tokens.inc(len(deltas))
        for key, pieces in by_job.items():
            self.outbox.append((self.jobs[key], pieces))
        for job in {id(d.owner): d.owner for d in deltas if d.finish_reason is not None}.values():
            if all(r.finish is not None for r in job.rows):
                self._finish(job, None)

    def _timing(self, job: Job, row_key: int, now: float) -> None:
        if self.metrics is None:
            return
        if job.first_token is None:
            job.first_token = now
            self.metrics.ttft.observe(now - job.submitted)
        last = job.last_token.get(row_key)
        if last is not None:
            self.metrics.itl.observe(now - last)
        job.last_token[row_key] = now

    def _finish(self, job: Job, error: BaseException | None) -> None:
        with self.cond:
            job.done, job.error = True, error
            self.jobs.pop(id(job), None)
            self._gauges()
        self.outbox.append((job, error))

    def _fail_all(self, e: BaseException) -> None:
        for job in list(self.jobs.values()):
            self._finish(job, e)
        self.batch = Batch(self.engine)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.running.set(len(self.jobs))
            self.metrics.waiting.set(len(self.waiting))


def _deliver(items: list[tuple[Job, Any]]) -> None:
    for job, item in items:
        job.queue.put_nowait(item)
