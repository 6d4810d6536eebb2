-- hotlimit: helpers shared by every algorithm.
--
-- Lua numbers are doubles: integers are exact up to 2^53 (about 104 days in nanoseconds), so
-- no absolute nanosecond time is ever formed. Time is carried as whole seconds `s` plus
-- nanoseconds `n` within that second, and each algorithm keeps its state relative to a base
-- second stored with it. Every product and difference below stays under 2^53 for the limits
-- hotlimit accepts (periods up to 100 days, see rate.py).

local NS_PER_MS = 1000000
local NS_PER_S = 1000000000

-- Exact floor(a / b) for integers a >= 0, b > 0 below 2^53: the double quotient can round up
-- across an integer, so the result is corrected by one in either direction.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- An integer as a decimal string, never in exponent form.
local function int(x)
  return string.format('%.0f', x)
end

-- A TTL in whole milliseconds, rounded up, at least 1.
local function ttl_ms(ns)
  local ms = idiv(ns + NS_PER_MS - 1, NS_PER_MS)
  if ms < 1 then
    return 1
  end
  return ms
end

local function words(raw)
  local out = {}
  for w in string.gmatch(raw, '%S+') do
    out[#out + 1] = tonumber(w)
  end
  return out
end
