#!/usr/bin/env python3
"""OpenAI Python SDK against the sticky proxy (for scripts/real_clients.sh).

Runs, against --base-url (the proxy's /v1):
  http:  responses.create with prompt_cache_key (no session header), non-streaming and
         streaming, then a turn continued only by previous_response_id (no session id at
         all): it must reach the account that created the response (the mock answers
         400 previous_response_not_found anywhere else).
  ws:    responses.connect() (the SDK's Responses WebSocket mode) with a session header;
         two turns on one socket (the second by previous_response_id), then a second
         socket of the same session.
  realtime: realtime.connect() twice with one session header: both on one account.
Prints one JSON line per call: {"check": ..., "served_by": ..., "ok": ...} and exits 1
if a check failed.
"""

import argparse
import json
import os
import sys
import time
import uuid

import openai
from openai import OpenAI

RESULTS = []


def record(check, ok, **kw):
    rec = {"check": check, "ok": bool(ok), **kw}
    RESULTS.append(rec)
    print(json.dumps(rec), flush=True)


def served(text):
    # "hi from account NAME"
    return text.rsplit(" ", 1)[-1] if text else None


def http_checks(client, model, n_sessions):
    homes = {}
    for i in range(n_sessions):
        key = f"sdk-http-{uuid.uuid4()}"
        t0 = time.time()
        raw = client.responses.with_raw_response.create(
            model=model, input="say hi", prompt_cache_key=key, store=True)
        r1 = raw.parse()
        a1 = served(r1.output_text)
        record("http.create", a1 is not None, session=key, served_by=a1,
               x_served_by=raw.headers.get("x-served-by"), response_id=r1.id,
               ms=round((time.time() - t0) * 1000))
        # Streaming, same prompt_cache_key: same account.
        text = ""
        with client.responses.stream(model=model, input="again", prompt_cache_key=key,
                                     store=True) as stream:
            for ev in stream:
                if ev.type == "response.output_text.delta":
                    text += ev.delta
            final = stream.get_final_response()
        a2 = served(text)
        record("http.stream_same_key", a2 == a1, session=key, served_by=a2, expected=a1)
        # previous_response_id only: no session header, no prompt_cache_key.
        try:
            r3 = client.responses.create(model=model, input="and again",
                                         previous_response_id=final.id, store=True)
            a3 = served(r3.output_text)
            record("http.previous_response_id", a3 == a1, served_by=a3, expected=a1,
                   previous_response_id=final.id)
        except openai.APIStatusError as e:
            record("http.previous_response_id", False, status=e.status_code,
                   error=str(e)[:200])
        homes[key] = a1
    record("http.sessions_spread", True, accounts=sorted(set(homes.values())),
           note="informational: sessions over accounts")


def ws_checks(client, model):
    session = f"sdk-ws-{uuid.uuid4()}"
    accounts = []
    for sock in range(2):
        t0 = time.time()
        try:
            with client.responses.connect(extra_headers={"session-id": session}) as conn:
                prev = None
                for turn in range(2):
                    kw = {"model": model, "input": f"hi {sock}.{turn}", "store": True}
                    if prev:
                        kw["previous_response_id"] = prev
                    conn.response.create(**kw)
                    text = ""
                    for ev in conn:
                        if ev.type == "response.output_text.delta":
                            text += ev.delta
                        elif ev.type == "response.completed":
                            prev = ev.response.id
                            break
                        elif ev.type == "error":
                            text = f"ERROR {getattr(ev, 'error', ev)}"
                            break
                    acct = served(text)
                    accounts.append(acct)
                    record("ws.turn", not text.startswith("ERROR"), socket=sock, turn=turn,
                           session=session, served_by=acct, response_id=prev,
                           ms=round((time.time() - t0) * 1000))
        except Exception as e:  # noqa: BLE001 -- report, don't crash the summary
            record("ws.connect", False, socket=sock, error=f"{type(e).__name__}: {e}"[:300])
            return
    record("ws.same_account", len(set(accounts)) == 1, accounts=accounts)


def realtime_checks(client):
    session = f"sdk-rt-{uuid.uuid4()}"
    accounts = []
    for sock in range(2):
        try:
            with client.realtime.connect(model="gpt-realtime",
                                         extra_headers={"session-id": session}) as conn:
                created = conn.recv()
                conn.session.update(session={"type": "realtime", "instructions": "x"})
                updated = conn.recv()
                acct = served(getattr(updated.session, "instructions", None))
                accounts.append(acct)
                record("realtime.socket", created.type == "session.created"
                       and updated.type == "session.updated", socket=sock, session=session,
                       served_by=acct)
        except Exception as e:  # noqa: BLE001
            record("realtime.connect", False, socket=sock, error=f"{type(e).__name__}: {e}"[:300])
            return
    record("realtime.same_account", len(set(accounts)) == 1, accounts=accounts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="gpt-5.2")
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--api-key-env", help="environment variable with the proxy's client token")
    a = p.parse_args()
    key = os.environ[a.api_key_env] if a.api_key_env else "sk-client"
    client = OpenAI(base_url=a.base_url, api_key=key, max_retries=0, timeout=30)
    record("sdk.version", True, openai=openai.__version__)
    http_checks(client, a.model, a.sessions)
    ws_checks(client, a.model)
    realtime_checks(client)
    failed = [r for r in RESULTS if not r["ok"]]
    print(json.dumps({"summary": "sdk", "checks": len(RESULTS), "failed": len(failed)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
