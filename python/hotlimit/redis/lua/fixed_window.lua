-- Fixed window aligned to the clock. State: "<window number> <count>".
-- A window is period_ms milliseconds; window w covers [w * period, (w + 1) * period).
-- In: key, t, cost, commit, force; reads limit and period_ms. Out: allowed, remaining, reset,
-- retry.
do
  local limit, period_ms = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local window = idiv(t.ms, period_ms)
  local until_end = ((window + 1) * period_ms - t.ms) * NS_PER_MS - t.sub
  local count = 0
  local raw = redis.call('GET', key)
  if raw then
    local sp = string.find(raw, ' ', 1, true)
    local w, c = tonumber(string.sub(raw, 1, sp - 1)), tonumber(string.sub(raw, sp + 1))
    -- A request that arrives late (its clock behind the one that opened the next window)
    -- counts in that newer window, never rewinds it.
    if c > 0 and w == window + 1 then
      window = window + 1
      until_end = period_ms * NS_PER_MS
    end
    if w == window then
      count = c
    end
  end
  if count + cost <= limit or force then
    if commit then
      redis.call('PSETEX', key, ttl_extra + idiv(until_end + NS_PER_MS - 1, NS_PER_MS), int(window) .. ' ' .. int(count + cost))
    end
    allowed, remaining, reset, retry = 1, math.max(limit - count - cost, 0), until_end, 0
  else
    allowed, remaining, reset, retry = 0, math.max(limit - count, 0), 0, until_end
    if count > 0 then
      reset = until_end
    end
  end
end
