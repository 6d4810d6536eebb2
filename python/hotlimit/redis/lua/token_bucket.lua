-- Token bucket as GCRA. State: "<base second> <TAT in ns after the base second>".
-- Emission interval T and capacity (burst * T) arrive precomputed in nanoseconds.
-- Times below are nanoseconds after the current second t.s; t.n is now.

local function token_bucket(key, t, emission, capacity, cost, commit)
  local tat = t.n
  local raw = redis.call('GET', key)
  if raw then
    local w = words(raw)
    local stored = w[2] - (t.s - w[1]) * NS_PER_S
    if stored > tat then
      tat = stored
    end
  end
  -- Compared as (TAT - now) against capacity - cost * T rather than forming TAT + cost * T:
  -- that sum can pass 2^53 for the longest periods, these terms never do.
  local waited = tat - t.n
  local room = capacity - cost * emission
  if waited <= room then
    local after = waited + cost * emission
    if commit then
      redis.call('SET', key, int(t.s) .. ' ' .. int(t.n + after), 'PX', ttl_ms(after))
    end
    return 1, idiv(capacity - after, emission), after, 0
  end
  return 0, idiv(capacity - waited, emission), waited, waited - room
end
