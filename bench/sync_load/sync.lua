-- wrk script for bench/sync_load.py: POST {base}/sync with JSON bodies read from a file.
--
--   wrk -t1 -c64 -d10s --latency -s sync.lua http://127.0.0.1:PORT/reality/sync -- BODIES
--
--   wrk ... -- BODIES MEAN_DELAY_MS      (paced: see below)
--
-- BODIES holds one JSON body per line ({"known": {...}}); each wrk thread sends them in turn,
-- starting at a different line, with Content-Type application/json. done() prints one line
-- "SYNC_LOAD_RESULT {...}" with the counts and latency percentiles (microseconds) that the
-- bench parses. "non2xx" is wrk's own count of responses with a status above 399 (what its
-- "Non-2xx or 3xx responses" line shows); the bench requires it to be 0 outside the overload
-- run. No response() hook is defined, so wrk does not hand each body to Lua (which would
-- cost the load generator CPU the server needs on a 2-core machine).
--
-- With MEAN_DELAY_MS, each connection waits a random time (exponential, that mean, in whole
-- ms as wrk's timers have) before each request: many clients with think time, as real
-- overload comes, instead of a closed loop that keeps every connection's request
-- outstanding at all times (there, by Little's law, latency = connections / answers per s,
-- however fast the server is). wrk starts a request's clock after the delay.

local bodies = {}
local next_body = 1
local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_no", thread_no)
end

function init(args)
  local path = args[1]
  if path == nil then
    error("sync.lua: pass the bodies file after --")
  end
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  f:close()
  if #bodies == 0 then
    error("sync.lua: no bodies in " .. path)
  end
  next_body = ((thread_no or 1) - 1) % #bodies + 1
  local mean = tonumber(args[2] or "")
  if mean ~= nil and mean > 0 then
    -- Defined only when pacing: wrk checks for delay() after init(), and a delay of 0 would
    -- still cost a timer per request in the unpaced runs.
    math.randomseed(os.time() + (thread_no or 1))
    function delay()
      return math.floor(-math.log(1 - math.random()) * mean + 0.5)
    end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SYNC_LOAD_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, '
      .. '"max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
