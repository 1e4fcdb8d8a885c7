"""Job counters shared by every process: kept in one Redis hash, written where a job is created and ends.

A job ends exactly once: the job store's update script refuses to touch a job that is no longer active, so the
terminal transition happens once whatever number of workers, replicas or redeliveries touch the job. That
transition (`TERMINAL_LUA`, run inside the script) is where the job's outcome, its stage timings, its search
batch size, its rerank outcome, its VLM call and its index image counts are added to the hash. A gateway's
/metrics renders the hash (gateway/metrics.py); nothing here holds an id.

Hash fields: `<family>|<label values joined by |>` for counters, and `<family>|<labels>|b<i>` (cumulative
count at or below BUCKETS[i]), `...|count`, `...|sum` for histograms.
"""

from __future__ import annotations

METRICS_KEY = "mmrag:metrics:jobs"

# Seconds. Searches take tens of milliseconds to seconds; index jobs and VLM calls up to minutes.
STAGE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _lua_table(values: tuple[float, ...]) -> str:
    return "{" + ", ".join(repr(float(v)) for v in values) + "}"


# Runs inside the job store's update script after the fields are written. KEYS[1]: the job, KEYS[4]: METRICS_KEY,
# `status` (a local of the enclosing script): the status before the update, ARGV[7]: now in seconds.
TERMINAL_LUA = f"""
local status_after = redis.call('HGET', KEYS[1], 'status')
if (status == 'queued' or status == 'running') and status_after ~= 'queued' and status_after ~= 'running' then
  local function observe(name, labels, value, buckets)
    local prefix = name .. '|' .. labels .. '|'
    for i, le in ipairs(buckets) do
      if value <= le then redis.call('HINCRBY', KEYS[4], prefix .. 'b' .. i, 1) end
    end
    redis.call('HINCRBY', KEYS[4], prefix .. 'count', 1)
    redis.call('HINCRBYFLOAT', KEYS[4], prefix .. 'sum', value)
  end
  local stage_buckets = {_lua_table(STAGE_BUCKETS)}
  local kind = redis.call('HGET', KEYS[1], 'kind')
  redis.call('HINCRBY', KEYS[4], 'jobs_finished|' .. kind .. '|' .. status_after, 1)
  local job = redis.call('HGETALL', KEYS[1])
  local fields = {{}}
  for i = 1, #job, 2 do fields[job[i]] = job[i + 1] end
  if not fields['timing.total'] and fields['created_ts'] then
    fields['timing.total'] = tostring((tonumber(ARGV[7]) - tonumber(fields['created_ts'])) * 1000)
  end
  for _, stage in ipairs({{'queue', 'embed', 'search', 'rerank', 'total'}}) do
    local ms = tonumber(fields['timing.' .. stage])
    if ms then observe('job_stage', kind .. '|' .. stage, ms / 1000, stage_buckets) end
  end
  local vlm_ms = tonumber(fields['timing.vlm'])
  if vlm_ms and vlm_ms > 0 then
    observe('job_stage', kind .. '|vlm', vlm_ms / 1000, stage_buckets)
  end
  if kind == 'search' then
    local batch = tonumber(fields['batch_size'])
    if batch then observe('search_batch_size', '', batch, {_lua_table(BATCH_BUCKETS)}) end
    if fields['result'] then
      local ok, result = pcall(cjson.decode, fields['result'])
      if ok and type(result) == 'table' and type(result['rerank']) == 'table' then
        local rerank = tostring(result['rerank']['status'])
        redis.call('HINCRBY', KEYS[4], 'rerank|' .. rerank, 1)
        if vlm_ms and vlm_ms > 0 then
          local outcome = 'failed'
          if rerank == 'applied' then outcome = 'ok' end
          redis.call('HINCRBY', KEYS[4], 'vlm_requests|' .. outcome, 1)
          observe('vlm', '', vlm_ms / 1000, stage_buckets)
        end
      end
    end
  elseif kind == 'index' then
    -- The chunks' summed work time (each chunk counted once, by the chunk script), not the wall time.
    local index_ms = tonumber(fields['work_ms.index'])
    if index_ms then observe('job_stage', 'index|index', index_ms / 1000, stage_buckets) end
    redis.call('HINCRBY', KEYS[4], 'index_images|indexed', tonumber(fields['count.indexed'] or '0'))
    redis.call('HINCRBY', KEYS[4], 'index_images|duplicate', tonumber(fields['count.duplicates'] or '0'))
    local ok, failed = pcall(cjson.decode, fields['failed'] or '[]')
    if ok and type(failed) == 'table' then
      redis.call('HINCRBY', KEYS[4], 'index_images|failed', #failed)
    end
  end
end
"""


def submitted_field(kind: str) -> str:
    return f"jobs_submitted|{kind}"
