-- hotlimit: one script call decides a batch of requests.
--
-- ARGV[1], ARGV[2]: the time as whole seconds and nanoseconds, or "" to use the server's TIME
--   (production always sends ""; only tests inject a time).
-- Then groups, each: mode, op count, and per op six values: the algorithm's code (its row of
--   the native registry), limit, period in ms, emission interval in ns, capacity in ns, cost.
--   The marker in decide() below becomes an if-chain on the code with one branch per registry row,
--   that row's file (lua/<name>.lua) spliced in; each file reads the values it needs.
-- Modes: "h" hit each op, "p" peek each op, "r" reset each op's key, "a" all-or-nothing:
--   the ops are hit only if every one of them would be allowed (their keys are distinct);
--   "c" consume each op's cost whatever the limit says (hybrid mode's deltas, and what was
--   admitted locally during an outage), answering the units left after it.
--   "o" makes the "c" group right after it count once: its first key is the group's id,
--   set for the op's first value in ms if absent; if it was present, the group was applied by
--   an earlier call whose reply was lost, and the "c" group only answers what is left (cost 0).
--   Its other keys are ids of groups whose replies arrived, deleted: they are done with.
-- KEYS: one per op, in order. The reply: four integers per op, in order:
--   allowed (1/0; for "r", 1 if the key existed), remaining, reset_after ns, retry_after ns.

local t = {}
-- With an injected time (tests only), state must not expire in real time between steps that
-- are microseconds apart in the test's clock: TTLs get ten minutes more.
local ttl_extra = 0
if ARGV[1] == '' then
  local now = redis.call('TIME')
  t.s = tonumber(now[1])
  t.n = tonumber(now[2]) * 1000
else
  t.s = tonumber(ARGV[1])
  t.n = tonumber(ARGV[2])
  ttl_extra = 600000
end
t.ms = t.s * 1000 + idiv(t.n, NS_PER_MS)
t.sub = t.n % NS_PER_MS

local function decide(key, i, commit, force, no_cost)
  local algo, cost = ARGV[i], tonumber(ARGV[i + 5])
  if no_cost then
    cost = 0
  end
  local allowed, remaining, reset, retry
  --@ algorithms
  return allowed, remaining, reset, retry
end

local out = {}
local arg, k = 3, 1
local applied_before = false
while arg <= #ARGV do
  local mode, n = ARGV[arg], tonumber(ARGV[arg + 1])
  local first = arg + 2
  if mode == 'o' then
    local fresh = redis.call('SET', KEYS[k], '1', 'NX', 'PX', ARGV[first])
    applied_before = not fresh
    out[#out + 1] = fresh and 1 or 0
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = 0
    for j = 1, n - 1 do
      out[#out + 1] = redis.call('DEL', KEYS[k + j])
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
    end
  elseif mode == 'r' then
    for j = 0, n - 1 do
      out[#out + 1] = redis.call('DEL', KEYS[k + j])
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
    end
  else
    local commit = mode == 'h' or mode == 'c'
    local force = mode == 'c'
    if mode == 'a' then
      -- Check every op first; consume only if all are allowed.
      commit = true
      for j = 0, n - 1 do
        if decide(KEYS[k + j], first + 6 * j, false, false) == 0 then
          commit = false
          break
        end
      end
    end
    local again = force and applied_before
    if again then
      commit = false
    end
    applied_before = false
    for j = 0, n - 1 do
      local allowed, remaining, reset, retry = decide(KEYS[k + j], first + 6 * j, commit, force, again)
      out[#out + 1] = allowed
      out[#out + 1] = remaining
      out[#out + 1] = reset
      out[#out + 1] = retry
    end
  end
  k = k + n
  arg = first + 6 * n
end
return out
