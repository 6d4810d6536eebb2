-- Token bucket as GCRA. State: struct '<ddd': a base second, the TAT in ns after it, and the
-- millisecond (on the script's clock) the key's TTL runs to. A write keeps that TTL while it
-- covers the new TAT, and otherwise sets it a quarter of the capacity past the TAT, so a key
-- hit at its rate pays for a TTL once every burst / 4 hits, not on each.
-- In: key, the time, the op's values, cost, commit, force; reads emission (T) and capacity
-- (burst * T), in ns. Out: allowed, remaining, reset, retry, in ns after the current second.
do
  local tat = tn
  local expires = -1
  local raw = redis.call('GET', key)
  if raw and #raw == 24 then
    local base, stored, until_ms = struct.unpack('<ddd', raw)
    -- A base second no write of this key can have made (an hour ahead, beyond any TTL behind,
    -- not a number) is not hotlimit's state: the key starts afresh.
    if base <= ts + 3600 and base >= ts - 20000000 then
      stored = stored - (ts - base) * NS_PER_S
      if stored > tat then
        tat = stored
      end
      expires = until_ms
    end
  end
  -- Compared as (TAT - now) against capacity - cost * T rather than forming TAT + cost * T:
  -- that sum can pass 2^53 for the longest periods, these terms never do.
  local waited = tat - tn
  local room = capacity - cost * emission
  if waited <= room or force then
    local after = waited + cost * emission
    if commit then
      -- The first whole ms at or after the TAT, and one more for the clocks' rounding.
      local needed = tms + idiv(tsub + after + NS_PER_MS - 1, NS_PER_MS) + 1
      if needed <= expires then
        redis.call('SET', key, struct.pack('<ddd', ts, tn + after, expires), 'KEEPTTL')
      else
        local until_ms = needed + idiv(capacity, 4 * NS_PER_MS)
        local value = struct.pack('<ddd', ts, tn + after, until_ms)
        redis.call('SET', key, value, 'PX', until_ms - tms + ttl_extra)
      end
    end
    allowed, remaining, reset, retry = 1, 0, after, 0
    if capacity > after then
      remaining = idiv(capacity - after, emission)
    end
  else
    allowed, remaining, reset, retry = 0, 0, waited, waited - room
    if capacity > waited then
      remaining = idiv(capacity - waited, emission)
    end
  end
end
