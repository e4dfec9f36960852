-- wrk script of benches/peers.sh: a streaming chat completion, `POST /v1/chat/completions`
-- with a small JSON body, over 10 000 (or args[1]) UUID-shaped ids in `session-id` (Codex's
-- header); requests formatted once in init() and handed out round-robin (one wrk thread:
-- each session's requests come in order, a full cycle apart); done() prints one RESULT line.
local reqs = {}
local n = 0
local i = 0
function init(args)
  n = tonumber(args[1]) or 10000
  local body = '{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
  for k = 1, n do
    local id = string.format("%08x-%04x-4%03x-8%03x-%012x", k * 2654435761 % 4294967296, k % 65536, k % 4096, (k * 7) % 4096, k * 40503)
    reqs[k] = wrk.format("POST", "/v1/chat/completions",
      { ["session-id"] = id, ["content-type"] = "application/json", ["accept"] = "text/event-stream" }, body)
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%.1f p99_us=%.1f p999_us=%.1f mean_us=%.1f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
