-- wrk script: POST a chat completion with a bearer key, then print one JSON summary line.
-- Settings come from the environment so one script serves every target:
--   BENCH_KEY (bearer key, may be empty), BENCH_BODY_FILE (request body),
--   BENCH_STREAM=1 (ask the fake upstream for its SSE body),
--   BENCH_TIMED=1 (one connection only: time each request here, without wrk's
--   coordinated-omission correction, which turns one scheduler hiccup into a fat tail).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local key = os.getenv("BENCH_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file ~= nil and body_file ~= "" then
  local handle = assert(io.open(body_file, "rb"))
  wrk.body = handle:read("*a")
  handle:close()
end

if os.getenv("BENCH_STREAM") == "1" then
  wrk.headers["X-Bench-Stream"] = "1"
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

if os.getenv("BENCH_TIMED") == "1" then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_us()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
  end
  local prepared = nil
  local started = 0
  samples = {}
  function request()
    if prepared == nil then prepared = wrk.format() end
    started = now_us()
    return prepared
  end
  function response(status, headers, body)
    samples[#samples + 1] = now_us() - started
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  local index = math.max(1, math.ceil(#sorted * p / 100))
  return sorted[index]
end

local function timed_percentiles()
  local all = {}
  for _, thread in ipairs(threads) do
    local got = thread:get("samples")
    if got ~= nil then
      for _, v in ipairs(got) do all[#all + 1] = v end
    end
  end
  table.sort(all)
  return #all, percentile(all, 50), percentile(all, 90), percentile(all, 99)
end

function done(summary, latency, requests)
  local e = summary.errors
  local n, t50, t90, t99 = timed_percentiles()
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f,' ..
    '"timed":%d,"t50_us":%.1f,"t90_us":%.1f,"t99_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, n, t50, t90, t99))
end
