-- wrk script for `robustmm serve`: POSTs the JSON body in the file $BODY to every connection, again and again,
-- and prints one JSON line at the end (requests, errors, rows/s from $ROWS rows a request, latency percentiles).
-- wrk is a C load generator: it costs the cores a fraction of what scripts/serve_load.py (Python, httpx) does.
--   BODY=body.json ROWS=1 wrk -t1 -c32 -d10s -s scripts/serve_wrk.lua http://127.0.0.1:8000/predict
local file = assert(io.open(os.getenv("BODY"), "r"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "application/json"
file:close()

function done(summary, latency, requests)
  local rows = tonumber(os.getenv("ROWS") or "1")
  local seconds = summary.duration / 1e6
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "rows_per_request": %d, "seconds": %.3f, "rows_per_second": %.1f, "p50_ms": %.1f, ' ..
    '"p95_ms": %.1f, "p99_ms": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}}\n',
    summary.requests, rows, seconds, summary.requests * rows / seconds, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout))
end
