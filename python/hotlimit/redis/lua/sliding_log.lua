-- Sliding log (exact). A sorted set with one member per consumed unit, scored by its time in
-- ns after a base second; the base is the member "b:<second>", scored -inf so it sorts first
-- and no range below touches it. Member names carry the absolute time, so they stay unique
-- when the base moves. The base moves forward once offsets pass REBASE_NS, which keeps every
-- score (at most REBASE_NS + one period) exact in a double.

-- In: key, the time, the op's values, cost, commit, force; reads limit and period_ms.
-- Out: allowed, remaining, reset, retry.
do
  local REBASE_NS = 2 ^ 48 -- about 3.3 days
  local period = period_ms * NS_PER_MS
  local head = redis.call('ZRANGE', key, 0, 0)
  local base = ts
  if head[1] then
    base = tonumber(string.sub(head[1], 3))
  end
  local now = (ts - base) * NS_PER_S + tn
  if now > REBASE_NS then
    local delta = (ts - base) * NS_PER_S
    local all = redis.call('ZRANGE', key, 1, -1, 'WITHSCORES')
    redis.call('ZREM', key, head[1])
    redis.call('ZADD', key, '-inf', 'b:' .. int(ts))
    for i = 1, #all, 2 do
      redis.call('ZADD', key, int(tonumber(all[i + 1]) - delta), all[i])
    end
    base = ts
    now = tn
  end
  local newest = nil
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[1] and last[1] ~= head[1] then
    newest = tonumber(last[2])
    if newest > now then
      now = newest -- a late request is logged with the newest, keeping the log in order
    end
  end
  local horizon = '(' .. int(now - period)
  local count = redis.call('ZCOUNT', key, horizon, '+inf')
  if count + cost <= limit or force then
    if commit then
      if not head[1] then
        redis.call('ZADD', key, '-inf', 'b:' .. int(base))
      end
      redis.call('ZREMRANGEBYSCORE', key, '(-inf', int(now - period))
      local same = 0
      if newest == now then
        same = redis.call('ZCOUNT', key, int(now), int(now))
      end
      local sec = idiv(now, NS_PER_S)
      local name = int(base + sec) .. '.' .. int(now - sec * NS_PER_S) .. ':'
      local score = int(now)
      local i = 1
      while i <= cost do
        local args = {}
        local last_i = math.min(cost, i + 999)
        for j = i, last_i do
          args[#args + 1] = score
          args[#args + 1] = name .. int(same + j)
        end
        redis.call('ZADD', key, unpack(args))
        i = last_i + 1
      end
      redis.call('PEXPIRE', key, period_ms + ttl_extra)
    end
    allowed, remaining, reset, retry = 1, math.max(limit - count - cost, 0), period, 0
  else
    -- Allowed once the oldest (count + cost - limit) live units have left the window.
    local excess = count + cost - limit
    local unit = redis.call('ZRANGEBYSCORE', key, horizon, '+inf', 'WITHSCORES', 'LIMIT', excess - 1, 1)
    allowed, remaining = 0, math.max(limit - count, 0)
    reset, retry = newest + period - now, tonumber(unit[2]) + period - now
  end
end
