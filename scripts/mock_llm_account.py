#!/usr/bin/env python3
"""A mock account speaking three chat APIs, for scripts/real_clients_more.sh.

Serves, on one loopback port (Python standard library only, HTTP/1.1 with keep-alive;
streams are sent chunked):
  POST /v1/messages                        Anthropic Messages: JSON, or SSE with "stream": true
  POST /v1/messages/count_tokens           Anthropic token count
  POST /v1beta/models/M:generateContent    Gemini: JSON
  POST /v1beta/models/M:streamGenerateContent[?alt=sse]   Gemini: SSE (a JSON array without alt=sse)
  POST /v1beta/models/M:countTokens        Gemini token count
  POST /v1internal:METHOD                  Gemini Code Assist (what Gemini CLI speaks when it
                                           logs in with Google or with Compute ADC):
                                           loadCodeAssist, (stream)GenerateContent, countTokens;
                                           other methods answer {}
  GET  /computeMetadata/v1/...             a GCE metadata server (--metadata-token-env): hands
                                           out the token in that environment variable
  POST /v1/chat/completions                OpenAI-compatible chat completions: JSON, or SSE
  GET  /v1/models, /v1beta/models          minimal model lists
  POST /mock/fail?status=429&count=N[&path=P]   the next N API requests (whose path starts
                                           with P, if given) fail with that status

Every answer's text is "hi from account NAME", so the caller can tell which account
served. Every request is logged as one JSON line (to --log and to stdout) with the
headers it carried (credentials reduced to a short SHA-256 prefix: tells keys apart,
never shows one), the body's top-level keys and the body fields that can carry a session.
Loopback only: it binds 127.0.0.1.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REDACT = {"authorization", "x-api-key", "x-goog-api-key", "cookie", "proxy-authorization"}
# Body fields that may carry a session id, by dotted path (logged when present).
SESSION_FIELDS = ("metadata", "user", "session_id", "sessionId", "prompt_cache_key",
                  "user_prompt_id", "conversation", "request.session_id",
                  "providerOptions", "extra_body")


class Account:
    def __init__(self, name, log_path, delay_ms, metadata_token=None):
        self.name = name
        self.metadata_token = metadata_token
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.lock = threading.Lock()
        self.counter = 0
        self.fail_status = None
        self.fail_count = 0
        self.fail_path = ""
        self.delay = delay_ms / 1000.0

    def emit(self, **rec):
        rec = {"t": round(time.time(), 3), "account": self.name, **rec}
        line = json.dumps(rec, sort_keys=True)
        with self.lock:
            print(line, flush=True)
            if self.log:
                self.log.write(line + "\n")

    def take_failure(self, path):
        with self.lock:
            if self.fail_count > 0 and path.startswith(self.fail_path):
                self.fail_count -= 1
                return self.fail_status
            return None

    def next_n(self):
        with self.lock:
            self.counter += 1
            return self.counter

    @property
    def text(self):
        return f"hi from account {self.name}"


def pick(body, dotted):
    cur = body
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def summarize(body):
    """What matters for stickiness: the body's keys and the fields that may hold a session."""
    if not isinstance(body, dict):
        return {}
    out = {"keys": sorted(body.keys())}
    for f in SESSION_FIELDS:
        v = pick(body, f)
        if v is not None:
            out[f] = v
    for k in ("model", "stream"):
        if k in body:
            out[k] = body[k]
    for k in ("messages", "contents", "input", "request.contents"):
        if isinstance(pick(body, k), list):
            out[k] = len(pick(body, k))
    return out


def anthropic_events(acct, body, n):
    model = body.get("model") or "mock-model"
    mid = f"msg_{acct.name}_{n}"
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}
    message = {"id": mid, "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": dict(usage, output_tokens=1)}
    yield "message_start", {"type": "message_start", "message": message}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    yield "ping", {"type": "ping"}
    yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": acct.text}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 5}}
    yield "message_stop", {"type": "message_stop"}


def anthropic_message(acct, body, n):
    return {"id": f"msg_{acct.name}_{n}", "type": "message", "role": "assistant",
            "model": body.get("model") or "mock-model",
            "content": [{"type": "text", "text": acct.text}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def gemini_response(acct, model, n):
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": acct.text}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                              "totalTokenCount": 15},
            "modelVersion": model, "responseId": f"resp_{acct.name}_{n}"}


def chat_chunks(acct, body, n):
    base = {"id": f"chatcmpl_{acct.name}_{n}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.get("model") or "mock-model"}
    yield dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                               "finish_reason": None}])
    yield dict(base, choices=[{"index": 0, "delta": {"content": acct.text},
                               "finish_reason": None}])
    yield dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    yield dict(base, choices=[], usage={"prompt_tokens": 10, "completion_tokens": 5,
                                        "total_tokens": 15})


def chat_completion(acct, body, n):
    return {"id": f"chatcmpl_{acct.name}_{n}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model") or "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": acct.text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def make_handler(acct):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mock-llm-account"

        def log_message(self, *args):  # one JSON line per request instead
            pass

        def headers_of(self):
            return {k.lower(): (f"<sha256:{hashlib.sha256(v.encode()).hexdigest()[:8]}>"
                                if k.lower() in REDACT else v)
                    for k, v in self.headers.items()}

        def read_body(self):
            n = int(self.headers.get("content-length") or 0)
            if n:
                return self.rfile.read(n)
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                raw = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return raw
                    raw += self.rfile.read(size)
                    self.rfile.readline()
            return b""

        def send_json(self, obj, status=200):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-mock-account", acct.name)
            self.end_headers()
            self.wfile.write(data)

        def start_stream(self, content_type="text/event-stream"):
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("x-mock-account", acct.name)
            self.end_headers()

        def chunk(self, data):
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                if acct.delay:
                    time.sleep(acct.delay)

        def end_stream(self):
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path.startswith("/computeMetadata/") and acct.metadata_token:
                acct.emit(kind="metadata", method="GET", path=url.path)
                if url.path.endswith("/token"):
                    obj = {"access_token": acct.metadata_token, "expires_in": 3600,
                           "token_type": "Bearer"}
                elif url.path.endswith("/project-id"):
                    obj = "mock-project"
                else:
                    obj = {}
                data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
                self.send_response(200)
                self.send_header("metadata-flavor", "Google")
                self.send_header("content-type", "application/json" if obj != "mock-project"
                                 else "text/plain")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                return self.wfile.write(data)
            acct.emit(kind="http", method="GET", path=url.path, query=url.query,
                      headers=self.headers_of())
            if url.path.startswith("/v1internal:"):
                return self.send_json({})
            if url.path == "/v1/models":
                return self.send_json({"object": "list", "data": [
                    {"id": "mock-model", "object": "model", "type": "model", "created": 0,
                     "owned_by": acct.name, "display_name": "mock-model"}],
                    "has_more": False, "first_id": "mock-model", "last_id": "mock-model"})
            if url.path == "/v1beta/models":
                return self.send_json({"models": [
                    {"name": "models/mock-model", "displayName": "mock-model",
                     "supportedGenerationMethods": ["generateContent", "countTokens"]}]})
            return self.send_json({"error": {"message": "not found"}}, status=404)

        def do_POST(self):
            url = urlsplit(self.path)
            raw = self.read_body()
            if url.path == "/mock/fail":
                q = parse_qs(url.query)
                with acct.lock:
                    acct.fail_status = int(q.get("status", ["429"])[0])
                    acct.fail_count = int(q.get("count", ["1"])[0])
                    acct.fail_path = q.get("path", [""])[0]
                acct.emit(kind="control", fail_status=acct.fail_status,
                          fail_count=acct.fail_count, fail_path=acct.fail_path)
                return self.send_json({"ok": True})
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            status = acct.take_failure(url.path)
            acct.emit(kind="http", method="POST", path=url.path, query=url.query,
                      headers=self.headers_of(), body=summarize(body), bytes=len(raw),
                      injected_failure=status)
            if status:
                return self.send_json({"error": {"type": "rate_limit_error", "code": status,
                                                 "message": f"injected {status}"}},
                                      status=status)
            path = url.path
            if path == "/v1/messages":
                n = acct.next_n()
                if not body.get("stream"):
                    return self.send_json(anthropic_message(acct, body, n))
                self.start_stream()
                for ev, data in anthropic_events(acct, body, n):
                    self.chunk(f"event: {ev}\ndata: {json.dumps(data)}\n\n".encode())
                return self.end_stream()
            if path == "/v1/messages/count_tokens":
                return self.send_json({"input_tokens": 10})
            if path.startswith("/v1beta/models/") and ":" in path:
                model, method = path[len("/v1beta/models/"):].rsplit(":", 1)
                if method == "countTokens":
                    return self.send_json({"totalTokens": 10})
                if method == "generateContent":
                    return self.send_json(gemini_response(acct, model, acct.next_n()))
                if method == "streamGenerateContent":
                    resp = gemini_response(acct, model, acct.next_n())
                    if "alt=sse" in url.query:
                        self.start_stream()
                        self.chunk(f"data: {json.dumps(resp)}\r\n\r\n".encode())
                    else:
                        self.start_stream("application/json")
                        self.chunk(json.dumps([resp]).encode())
                    return self.end_stream()
            if path.startswith("/v1internal:"):
                method = path[len("/v1internal:"):]
                if method == "loadCodeAssist":
                    return self.send_json({"currentTier": {"id": "standard-tier",
                                                           "name": "mock tier"},
                                           "cloudaicompanionProject": "mock-project"})
                if method == "countTokens":
                    return self.send_json({"totalTokens": 10})
                if method in ("generateContent", "streamGenerateContent"):
                    n = acct.next_n()
                    resp = {"response": gemini_response(acct, body.get("model") or "", n),
                            "traceId": f"trace_{acct.name}_{n}"}
                    if method == "generateContent":
                        return self.send_json(resp)
                    self.start_stream()
                    self.chunk(f"data: {json.dumps(resp)}\r\n\r\n".encode())
                    return self.end_stream()
                return self.send_json({})
            if path == "/v1/chat/completions":
                n = acct.next_n()
                if not body.get("stream"):
                    return self.send_json(chat_completion(acct, body, n))
                self.start_stream()
                for c in chat_chunks(acct, body, n):
                    self.chunk(f"data: {json.dumps(c)}\n\n".encode())
                self.chunk(b"data: [DONE]\n\n")
                return self.end_stream()
            return self.send_json({"error": {"message": "not found"}}, status=404)

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", help="append JSON lines here as well as to stdout")
    p.add_argument("--delay-ms", type=int, default=0, help="pause between streamed events")
    p.add_argument("--metadata-token-env", metavar="ENV_VAR",
                   help="also serve a GCE metadata server handing out this variable's value")
    a = p.parse_args()
    token = os.environ.get(a.metadata_token_env) if a.metadata_token_env else None
    acct = Account(a.name, a.log, a.delay_ms, token)
    server = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(acct))
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
