"""A minimal but real OpenAI-compatible HTTP server for the tests: lmlab's engine behind
/v1/completions and /v1/chat/completions on 127.0.0.1 (standard library HTTP, one thread per request).

It exists so the OpenAI backend is tested over a real socket with the real `openai` client, never a mock.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lmlab.data.chat import END_OF_TURN, render
from lmlab.infer.sampling import SamplingParams


def _params(body: dict, eot: int | None, chat: bool) -> SamplingParams:
    stop = body.get("stop") or []
    return SamplingParams(temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                          n=int(body.get("n", 1)), max_new_tokens=int(body.get("max_tokens", 16)),
                          stop=[stop] if isinstance(stop, str) else list(stop), seed=body.get("seed"),
                          logprobs=True, stop_token_ids=[eot] if chat and eot is not None else [])


def serve(engine, lock: threading.Lock | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Start serving `engine` on a free port; returns (server, base_url). Call server.shutdown() after."""
    lock = lock or threading.Lock()
    eot = engine.tok.token_to_id(END_OF_TURN)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat = self.path.endswith("/chat/completions")
            if not chat and not self.path.endswith("/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            prompt = render(body["messages"]) if chat else body["prompt"]
            with lock:
                out = engine.generate([prompt], _params(body, eot, chat))[0]
            choices = []
            for c in out.completions:
                text = c.text.strip() if chat else c.text
                toks = [engine.tok.decode([t]) for t in c.token_ids]
                lps = c.logprobs or []
                if chat:
                    choices.append({"index": c.index, "finish_reason": c.finish_reason,
                                    "message": {"role": "assistant", "content": text},
                                    "logprobs": {"content": [{"token": t, "logprob": lp, "bytes": None,
                                                              "top_logprobs": []} for t, lp in zip(toks, lps)]}})
                else:
                    choices.append({"index": c.index, "text": text, "finish_reason": c.finish_reason,
                                    "logprobs": {"tokens": toks, "token_logprobs": lps, "top_logprobs": None,
                                                 "text_offset": list(range(len(toks)))}})
            usage = {"prompt_tokens": out.usage["prompt_tokens"], "completion_tokens": out.usage["completion_tokens"],
                     "total_tokens": out.usage["total_tokens"]}
            self._send(200, {"id": "cmpl-test", "object": "chat.completion" if chat else "text_completion",
                             "created": 0, "model": body.get("model", "lmlab"), "choices": choices, "usage": usage})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
