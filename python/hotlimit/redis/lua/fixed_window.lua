-- Fixed window aligned to the clock. State: struct '<dd': window number, count.
-- A window is period_ms milliseconds; window w covers [w * period, (w + 1) * period). The key's
-- TTL is set when its window's first write makes it, to the window's end; later writes in the
-- same window keep it.
-- In: key, the time, the op's values, cost, commit, force; reads limit and period_ms.
-- Out: allowed, remaining, reset, retry.
do
  local window = idiv(tms, period_ms)
  local until_end = ((window + 1) * period_ms - tms) * NS_PER_MS - tsub
  local count = 0
  local same = false
  local raw = redis.call('GET', key)
  if raw and #raw == 16 then
    local w, c = struct.unpack('<dd', raw)
    -- A request that arrives late (its clock behind the one that opened the next window)
    -- counts in that newer window, never rewinds it.
    if c > 0 and w == window + 1 then
      window = window + 1
      until_end = period_ms * NS_PER_MS
    end
    if w == window then
      count = c
      same = true
    end
  end
  if count + cost <= limit or force then
    if commit then
      if same then
        redis.call('SET', key, struct.pack('<dd', window, count + cost), 'KEEPTTL')
      else
        redis.call('SET', key, struct.pack('<dd', window, count + cost), 'PX',
          ttl_extra + idiv(until_end + NS_PER_MS - 1, NS_PER_MS))
      end
    end
    allowed, remaining, reset, retry = 1, math.max(limit - count - cost, 0), until_end, 0
  else
    allowed, remaining, reset, retry = 0, math.max(limit - count, 0), 0, until_end
    if count > 0 then
      reset = until_end
    end
  end
end
