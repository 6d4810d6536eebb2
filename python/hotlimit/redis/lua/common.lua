-- hotlimit: helpers shared by every algorithm.
--
-- Lua numbers are doubles: integers are exact up to 2^53 (about 104 days in nanoseconds), so
-- no absolute nanosecond time is ever formed. Time is carried as whole seconds `ts` plus
-- nanoseconds `tn` within that second (and as whole milliseconds `tms` plus the rest
-- `tsub`), and each algorithm keeps its state relative to a base it stores. Every product
-- and difference below stays under 2^53 for the limits hotlimit accepts (periods up to 100
-- days, sliding-window limits up to 1,000,000, see rate.py and the native core).
--
-- State is stored as little-endian doubles packed with `struct` (exact for these integers):
-- unpacking two doubles costs the server about a tenth of parsing and formatting them as
-- decimal text. A value of any other length is no state (it is overwritten on the next write).
--
-- The algorithm files are code blocks, not functions: script.py splices them into the
-- dispatcher in main.lua, so a call does not pay for creating a closure per algorithm.

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
  return string.format('%d', x)
end
