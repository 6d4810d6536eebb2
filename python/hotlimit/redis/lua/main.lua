-- hotlimit: one script call decides a batch of requests.
--
-- ARGV[1], ARGV[2]: the time as whole seconds and nanoseconds, or "" to use the server's TIME
--   (production always sends ""; only tests inject a time).
-- Then the ops, one argument each: 42 bytes, struct '<c1c1ddddd': the mode, the algorithm's
--   code (its row of the native registry), limit, period in ms, emission interval in ns,
--   capacity in ns, cost. A batch's ops are mostly alike (one limiter, cost 1), and Lua strings
--   are interned: an op equal to the one before is not unpacked again. The marker in the loop
--   below becomes an if-chain on the code with one branch per registry row, that row's file
--   (lua/<name>.lua) spliced in.
-- Modes of a single op: "h" hit, "p" peek, "r" reset the key.
-- A group of ops that belong together starts with a header argument: its mode and op count
--   ("a2", "c1024", "o3"); its ops follow (their own mode byte is not read).
--   "a" all-or-nothing: the ops are hit only if every one of them would be allowed (their
--   keys are distinct).
--   "c" consume each op's cost whatever the limit says (hybrid mode's deltas, and what was
--   admitted locally during an outage), answering the units left after it.
--   "o" makes the "c" group right after it count once; it is followed by one argument, a TTL
--   in ms, not by ops. Its first key is the group's id, set for that TTL if absent; if it was
--   present, the group was applied by an earlier call whose reply was lost, and the "c" group
--   only answers what is left (cost 0). Its other keys are ids of groups whose replies
--   arrived, deleted: they are done with.
-- KEYS: one per op (an "o" group: one per count), in order. The reply: four integers per key,
--   in order: allowed (1/0; for "r", 1 if the key existed), remaining, reset_after ns,
--   retry_after ns.
--
-- What a decision costs the server is mostly its redis.call()s: one GET, and for a hit one SET
-- that keeps the key's TTL (KEEPTTL) unless the state needs a later expiry (setting a TTL costs
-- about as much again as the SET); the clock is read once per call.

-- The time: whole seconds, ns within the second, whole ms, ns within the ms (see common.lua).
local ts, tn, tms, tsub
-- With an injected time (tests only), state must not expire in real time between steps that
-- are microseconds apart in the test's clock: TTLs get ten minutes more.
local ttl_extra = 0
if ARGV[1] == '' then
  local now = redis.call('TIME')
  ts = tonumber(now[1])
  tn = tonumber(now[2]) * 1000
else
  ts = tonumber(ARGV[1])
  tn = tonumber(ARGV[2])
  ttl_extra = 600000
end
tms = ts * 1000 + idiv(tn, NS_PER_MS)
tsub = tn % NS_PER_MS

-- The ops are decided inline in one loop (a closure per call costs the server more than the
-- rest of a one-op call's Lua). An "a" group is gone through twice: first to check each op,
-- then to commit (all) or only answer (any denied).
local out, o = { 0, 0, 0, 0 }, 1
local arg, k = 3, 1
local nargs = #ARGV
-- The op last unpacked (see above).
local last, mode, algo, limit, period_ms, emission, capacity, op_cost
-- The group the op at `arg` is in, its last argument, where its ops start, and its state.
local group, group_end, group_arg, group_k = nil, 0, 0, 0
local checking, all_ok, again = false, true, false
local applied_before = false
while arg <= nargs do
  local s = ARGV[arg]
  if #s ~= 42 then
    local g, n = string.sub(s, 1, 1), tonumber(string.sub(s, 2))
    if g == 'o' then
      local fresh = redis.call('SET', KEYS[k], '1', 'NX', 'PX', ARGV[arg + 1])
      applied_before = not fresh
      out[o], out[o + 1], out[o + 2], out[o + 3] = fresh and 1 or 0, 0, 0, 0
      o = o + 4
      for j = 1, n - 1 do
        out[o], out[o + 1], out[o + 2], out[o + 3] = redis.call('DEL', KEYS[k + j]), 0, 0, 0
        o = o + 4
      end
      k = k + n
      arg = arg + 2
    elseif g == 'a' or g == 'c' then
      group, group_end, group_arg, group_k = g, arg + n, arg + 1, k
      checking, all_ok = g == 'a' and n > 0, true
      again = g == 'c' and applied_before
      applied_before = false
      arg = arg + 1
    else
      error('hotlimit: unknown op ' .. s)
    end
  else
    if s ~= last then
      last = s
      mode, algo, limit, period_ms, emission, capacity, op_cost = struct.unpack('<c1c1ddddd', s)
    end
    local key = KEYS[k]
    local cost, commit, force = op_cost, mode == 'h', false
    local in_group = arg <= group_end
    if in_group then
      if group == 'c' then
        force, commit = true, not again
        if again then
          cost = 0
        end
      else
        commit = all_ok and not checking
      end
    end
    if mode == 'r' and not in_group then
      out[o], out[o + 1], out[o + 2], out[o + 3] = redis.call('DEL', key), 0, 0, 0
      o = o + 4
    else
      local allowed, remaining, reset, retry
      --@ algorithms
      if checking then
        all_ok = allowed == 1
      else
        out[o], out[o + 1], out[o + 2], out[o + 3] = allowed, remaining, reset, retry
        o = o + 4
      end
    end
    arg = arg + 1
    k = k + 1
    if checking and (arg > group_end or not all_ok) then
      checking = false
      arg, k = group_arg, group_k
    end
  end
end
return out
