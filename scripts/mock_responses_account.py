#!/usr/bin/env python3
"""A mock OpenAI Responses account for scripts/real_clients.sh.

Serves, on one loopback port:
  POST /v1/responses            JSON (stream=false) or SSE (stream=true)
  GET  /v1/responses + Upgrade  the Responses WebSocket: answers every `response.create`
                                text message with the same events as the SSE stream
  GET  /v1/realtime + Upgrade  a minimal Realtime socket (session.created, then
                                session.updated for every client message)
  GET  /v1/models               a minimal model list
  POST /mock/fail?status=429&count=N   the next N requests/upgrades fail with that status

Every answer carries the account's name ("hi from account NAME"; response ids
`resp_NAME_<n>`), so the caller can tell which account served. Every HTTP request, every
upgrade and every WebSocket message is logged as one JSON line (headers included,
credentials reduced to a short SHA-256 prefix) to --log and to stdout.

A `previous_response_id` this account did not create is answered like OpenAI does
(HTTP 400 / WebSocket `error` event, code `previous_response_not_found`), so a request
that reaches the wrong account shows up.

Needs aiohttp (pip install aiohttp). Loopback only: it binds 127.0.0.1.
"""

import argparse
import asyncio
import hashlib
import json
import sys
import time

from aiohttp import WSMsgType, web

REDACT = {"authorization", "x-api-key", "cookie"}


class Account:
    def __init__(self, name, log_path, delay_ms):
        self.name = name
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.counter = 0
        self.created = set()
        self.fail_status = None
        self.fail_count = 0
        self.delay = delay_ms / 1000.0

    def emit(self, **rec):
        rec = {"t": round(time.time(), 3), "account": self.name, **rec}
        line = json.dumps(rec, sort_keys=True)
        print(line, flush=True)
        if self.log:
            self.log.write(line + "\n")

    def take_failure(self):
        if self.fail_count > 0:
            self.fail_count -= 1
            return self.fail_status
        return None

    def new_id(self):
        self.counter += 1
        rid = f"resp_{self.name}_{self.counter}"
        self.created.add(rid)
        return rid

    def events(self, body, rid, generate=True):
        model = body.get("model") or "mock-model"
        base = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "status": "in_progress",
            "output": [],
            "parallel_tool_calls": False,
            "tool_choice": "auto",
            "tools": [],
            "store": body.get("store", True),
            "previous_response_id": body.get("previous_response_id"),
        }
        yield {"type": "response.created", "sequence_number": 0, "response": base}
        output = []
        if generate:
            text = f"hi from account {self.name}"
            mid = f"msg_{self.name}_{self.counter}"
            yield {
                "type": "response.output_item.added",
                "sequence_number": 1,
                "output_index": 0,
                "item": {"type": "message", "id": mid, "role": "assistant",
                         "status": "in_progress", "content": []},
            }
            yield {"type": "response.content_part.added", "sequence_number": 2,
                   "item_id": mid, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}
            yield {"type": "response.output_text.delta", "sequence_number": 3,
                   "item_id": mid, "output_index": 0, "content_index": 0,
                   "delta": text, "logprobs": []}
            yield {"type": "response.output_text.done", "sequence_number": 4,
                   "item_id": mid, "output_index": 0, "content_index": 0,
                   "text": text, "logprobs": []}
            part = {"type": "output_text", "text": text, "annotations": []}
            yield {"type": "response.content_part.done", "sequence_number": 5,
                   "item_id": mid, "output_index": 0, "content_index": 0, "part": part}
            item = {"type": "message", "id": mid, "role": "assistant", "status": "completed",
                    "content": [part]}
            yield {"type": "response.output_item.done", "sequence_number": 6,
                   "output_index": 0, "item": item}
            output = [item]
        done = dict(base, status="completed", output=output, usage={
            "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5 if generate else 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15 if generate else 10,
        })
        yield {"type": "response.completed", "sequence_number": 7 if generate else 1, "response": done}


def summarize(body):
    """The fields of a Responses request that matter for stickiness."""
    if not isinstance(body, dict):
        return {}
    out = {k: body.get(k) for k in ("type", "model", "store", "stream", "generate",
                                    "previous_response_id", "prompt_cache_key")
           if k in body}
    if isinstance(body.get("input"), list):
        out["input_items"] = len(body["input"])
    if "client_metadata" in body:
        out["client_metadata_keys"] = sorted((body.get("client_metadata") or {}).keys())
    return out


def headers_of(request):
    """Request headers; credentials as a short digest (tells keys apart, never shows one)."""
    return {k.lower(): (f"<sha256:{hashlib.sha256(v.encode()).hexdigest()[:8]}>"
                        if k.lower() in REDACT else v)
            for k, v in request.headers.items()}


def make_app(acct):
    async def responses_post(request):
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        status = acct.take_failure()
        acct.emit(kind="http", method="POST", path=request.path, headers=headers_of(request),
                  body=summarize(body), injected_failure=status)
        if status:
            return web.json_response({"error": {"message": f"injected {status}",
                                                "type": "mock", "code": "mock_failure"}},
                                     status=status)
        prev = body.get("previous_response_id")
        if prev and prev not in acct.created:
            return web.json_response({"error": {
                "message": f"Previous response with id '{prev}' not found.",
                "type": "invalid_request_error", "param": "previous_response_id",
                "code": "previous_response_not_found"}}, status=400)
        rid = acct.new_id()
        evs = list(acct.events(body, rid))
        if not body.get("stream"):
            return web.json_response(evs[-1]["response"],
                                     headers={"x-mock-account": acct.name})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream",
                                           "x-mock-account": acct.name})
        await resp.prepare(request)
        for ev in evs:
            await resp.write(f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode())
            if acct.delay:
                await asyncio.sleep(acct.delay)
        await resp.write_eof()
        return resp

    async def responses_get(request):
        if request.headers.get("upgrade", "").lower() != "websocket":
            acct.emit(kind="http", method="GET", path=request.path, headers=headers_of(request))
            return web.json_response({"error": {"message": "use POST or a WebSocket"}},
                                     status=405)
        status = acct.take_failure()
        acct.emit(kind="ws_upgrade", path=request.path, query=request.query_string,
                  headers=headers_of(request), injected_failure=status)
        if status:
            return web.json_response({"error": {"message": f"injected {status}"}}, status=status)
        ws = web.WebSocketResponse(compress=False, heartbeat=None, max_msg_size=0)
        ws.headers["x-mock-account"] = acct.name
        await ws.prepare(request)
        started = time.time()
        n = 0
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                n += 1
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    body = {}
                acct.emit(kind="ws_message", n=n, body=summarize(body), bytes=len(msg.data))
                if body.get("type") != "response.create":
                    continue
                prev = body.get("previous_response_id")
                if prev and prev not in acct.created:
                    await ws.send_str(json.dumps({"type": "error", "status": 400, "error": {
                        "type": "invalid_request_error", "code": "previous_response_not_found",
                        "message": f"Previous response with id '{prev}' not found."}}))
                    continue
                rid = acct.new_id()
                for ev in acct.events(body, rid, generate=body.get("generate", True) is not False):
                    await ws.send_str(json.dumps(ev))
                    if acct.delay:
                        await asyncio.sleep(acct.delay)
            elif msg.type == WSMsgType.BINARY:
                acct.emit(kind="ws_message", n=n, binary=len(msg.data))
            else:
                break
        acct.emit(kind="ws_closed", messages=n, seconds=round(time.time() - started, 3),
                  close_code=ws.close_code)
        return ws

    async def realtime(request):
        """A minimal Realtime socket: session.created, then session.updated per message."""
        if request.headers.get("upgrade", "").lower() != "websocket":
            return await other(request)
        status = acct.take_failure()
        acct.emit(kind="ws_upgrade", path=request.path, query=request.query_string,
                  headers=headers_of(request), injected_failure=status)
        if status:
            return web.json_response({"error": {"message": f"injected {status}"}}, status=status)
        ws = web.WebSocketResponse(compress=False, heartbeat=None, max_msg_size=0)
        await ws.prepare(request)
        session = {"id": f"sess_{acct.name}", "object": "realtime.session", "type": "realtime",
                   "model": request.query.get("model", "mock-realtime"),
                   "instructions": f"hi from account {acct.name}"}
        await ws.send_str(json.dumps({"type": "session.created", "event_id": "evt_0",
                                      "session": session}))
        n = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            n += 1
            acct.emit(kind="ws_message", path=request.path, n=n, bytes=len(msg.data))
            await ws.send_str(json.dumps({"type": "session.updated", "event_id": f"evt_{n}",
                                          "session": session}))
        acct.emit(kind="ws_closed", path=request.path, messages=n, close_code=ws.close_code)
        return ws

    async def models(request):
        acct.emit(kind="http", method="GET", path=request.path, headers=headers_of(request))
        return web.json_response({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": acct.name}]})

    async def fail(request):
        acct.fail_status = int(request.query.get("status", "429"))
        acct.fail_count = int(request.query.get("count", "1"))
        acct.emit(kind="control", fail_status=acct.fail_status, fail_count=acct.fail_count)
        return web.json_response({"ok": True})

    async def other(request):
        acct.emit(kind="http", method=request.method, path=request.path,
                  headers=headers_of(request), unhandled=True)
        return web.json_response({"error": {"message": "not found"}}, status=404)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/responses", responses_post)
    app.router.add_get("/v1/responses", responses_get)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/realtime", realtime)
    app.router.add_post("/mock/fail", fail)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", help="append JSON lines here as well as to stdout")
    p.add_argument("--delay-ms", type=int, default=0, help="pause between streamed events")
    a = p.parse_args()
    acct = Account(a.name, a.log, a.delay_ms)
    web.run_app(make_app(acct), host="127.0.0.1", port=a.port, print=None,
                access_log=None)


if __name__ == "__main__":
    sys.exit(main())
