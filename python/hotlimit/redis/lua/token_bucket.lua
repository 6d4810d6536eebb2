-- Token bucket as GCRA. State: "<base second> <TAT in ns after the base second>".
-- In: key, t, cost, commit, force; reads emission (T) and capacity (burst * T), in ns.
-- Out: allowed, remaining, reset, retry. Times are ns after the current second t.s.
do
  local emission, capacity = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local tat = t.n
  local raw = redis.call('GET', key)
  if raw then
    local sp = string.find(raw, ' ', 1, true)
    local stored = tonumber(string.sub(raw, sp + 1)) - (t.s - tonumber(string.sub(raw, 1, sp - 1))) * NS_PER_S
    if stored > tat then
      tat = stored
    end
  end
  -- Compared as (TAT - now) against capacity - cost * T rather than forming TAT + cost * T:
  -- that sum can pass 2^53 for the longest periods, these terms never do.
  local waited = tat - t.n
  local room = capacity - cost * emission
  if waited <= room or force then
    local after = waited + cost * emission
    if commit then
      redis.call('PSETEX', key, ttl_extra + idiv(after + NS_PER_MS - 1, NS_PER_MS), int(t.s) .. ' ' .. int(t.n + after))
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
