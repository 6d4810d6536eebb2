-- Fixed window aligned to the clock. State: "<window number> <count>".
-- A window is period_ms milliseconds; window w covers [w * period, (w + 1) * period).

local function fixed_window(key, t, limit, period_ms, cost, commit)
  local window = idiv(t.ms, period_ms)
  local until_end = ((window + 1) * period_ms - t.ms) * NS_PER_MS - t.sub
  local count = 0
  local raw = redis.call('GET', key)
  if raw then
    local w = words(raw)
    -- A request that arrives late (its clock behind the one that opened the next window)
    -- counts in that newer window, never rewinds it.
    if w[2] > 0 and w[1] == window + 1 then
      window = window + 1
      until_end = period_ms * NS_PER_MS
    end
    if w[1] == window then
      count = w[2]
    end
  end
  if count + cost <= limit then
    if commit then
      redis.call('SET', key, int(window) .. ' ' .. int(count + cost), 'PX', ttl_ms(until_end))
    end
    return 1, limit - count - cost, until_end, 0
  end
  local reset = 0
  if count > 0 then
    reset = until_end
  end
  return 0, limit - count, reset, until_end
end
