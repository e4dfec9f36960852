-- wrk script of benches/e2e.sh and benches/e2e_instructions.sh: 10 000 (or args[1])
-- UUID-shaped ids in `sticky-session-id`, requests formatted once in init() and handed
-- out round-robin; done() prints one RESULT line.
local reqs = {}
local n = 0
local i = 0
function init(args)
  n = tonumber(args[1]) or 10000
  for k = 1, n do
    -- 36 bytes, UUID-shaped
    local id = string.format("%08x-%04x-4%03x-8%03x-%012x", k * 2654435761 % 4294967296, k % 65536, k % 4096, (k * 7) % 4096, k * 40503)
    reqs[k] = wrk.format("GET", "/v1/responses", { ["sticky-session-id"] = id })
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
