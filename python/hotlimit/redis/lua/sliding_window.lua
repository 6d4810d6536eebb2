-- Sliding window counter. State: struct '<ddd': window number, previous count, current count.
-- The key's TTL runs to the end of the window after the stored one: set by the window's first
-- write, kept by the others.
-- The previous window counts with weight (period - elapsed) / period, elapsed in whole
-- milliseconds; compared in integers: prev * (P - e) <= (limit - used) * P.
-- In: key, the time, the op's values, cost, commit, force; reads limit and period_ms.
-- Out: allowed, remaining, reset, retry.
do
  local window = idiv(tms, period_ms)
  local elapsed = tms - window * period_ms
  local sub = tsub
  local prev, curr = 0, 0
  local same = false
  local raw = redis.call('GET', key)
  if raw and #raw == 24 then
    local w, p, c = struct.unpack('<ddd', raw)
    if (p > 0 or c > 0) and w == window + 1 then
      window = window + 1
      elapsed = 0
      sub = 0
    end
    if w == window then
      prev, curr = p, c
      same = true
    elseif w == window - 1 then
      prev = c
    end
  end
  local period = period_ms * NS_PER_MS
  local into = elapsed * NS_PER_MS + sub -- ns since the window started
  local weighted = prev * (period_ms - elapsed)
  local used = curr + cost
  if (used <= limit and weighted <= (limit - used) * period_ms) or force then
    if commit then
      if same then
        redis.call('SET', key, struct.pack('<ddd', window, prev, used), 'KEEPTTL')
      else
        redis.call('SET', key, struct.pack('<ddd', window, prev, used), 'PX',
          ttl_extra + idiv(2 * period - into + NS_PER_MS - 1, NS_PER_MS))
      end
    end
    allowed, retry = 1, 0
  else
    allowed = 0
    -- The first millisecond at which the request fits: within this window if the current
    -- count leaves room once enough of the previous window has slid out, else in the next.
    if used <= limit and prev > 0 then
      local slack = idiv((limit - used) * period_ms, prev)
      if slack > 0 then
        local e = period_ms - slack
        if e < 0 then
          e = 0
        end
        retry = e * NS_PER_MS - into
      end
    end
    if not retry then
      local e = 0
      if curr > 0 then
        local slack = idiv((limit - cost) * period_ms, curr)
        if slack < period_ms then
          e = period_ms - slack
        end
      end
      retry = period + e * NS_PER_MS - into
    end
    used = curr
  end
  -- What is left now (after this request, if allowed), and when the key is fresh again.
  local room = 0
  if limit > used then
    room = (limit - used) * period_ms
  end
  remaining = 0
  if room > weighted then
    remaining = idiv(room - weighted, period_ms)
  end
  if used > 0 then
    reset = 2 * period - into
  elseif prev > 0 then
    reset = period - into
  else
    reset = 0
  end
end
