-- Sliding window counter. State: "<window number> <previous count> <current count>".
-- The previous window counts with weight (period - elapsed) / period, elapsed in whole
-- milliseconds; compared in integers: prev * (P - e) <= (limit - used) * P.

local function sliding_window(key, t, limit, period_ms, cost, commit)
  local window = idiv(t.ms, period_ms)
  local elapsed = t.ms - window * period_ms
  local sub = t.sub
  local prev, curr = 0, 0
  local raw = redis.call('GET', key)
  if raw then
    local w = words(raw)
    if (w[2] > 0 or w[3] > 0) and w[1] == window + 1 then
      window = window + 1
      elapsed = 0
      sub = 0
    end
    if w[1] == window then
      prev, curr = w[2], w[3]
    elseif w[1] == window - 1 then
      prev = w[3]
    end
  end
  local period = period_ms * NS_PER_MS
  local into = elapsed * NS_PER_MS + sub -- ns since the window started
  local weighted = prev * (period_ms - elapsed)

  local function remaining(used)
    local room = 0
    if limit > used then
      room = (limit - used) * period_ms
    end
    if room <= weighted then
      return 0
    end
    return idiv(room - weighted, period_ms)
  end

  local function reset_after(used)
    if used > 0 then
      return 2 * period - into
    elseif prev > 0 then
      return period - into
    end
    return 0
  end

  local used = curr + cost
  if used <= limit and weighted <= (limit - used) * period_ms then
    if commit then
      redis.call('SET', key, int(window) .. ' ' .. int(prev) .. ' ' .. int(used), 'PX',
        ttl_ms(2 * period - into))
    end
    return 1, remaining(used), reset_after(used), 0
  end
  -- The first millisecond at which the request fits: within this window if the current
  -- count leaves room once enough of the previous window has slid out, else in the next.
  local retry
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
  return 0, remaining(curr), reset_after(curr), retry
end
