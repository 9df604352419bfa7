-- Shared prelude: proxy/storage/scripts.py prepends the definitions a script uses to it
-- before it is registered.
-- Money is integer nano-USD. Lua 5.1 numbers are doubles: exact for integers up to 2^53
-- (about $9M in nano-USD), and every value sent back to Redis or to Python goes through fmt()
-- so that it is never written in exponent notation.

local function num(v)
  -- "0" (the most common stored value) and the empty ones without a string-to-number parse
  if v == '0' or v == false or v == nil or v == '' then return 0 end
  return tonumber(v) or 0
end

local function fmt(n)
  if n == 0 then return '0' end  -- the most common amount, without a string.format
  return string.format('%d', n)
end

-- optional integer: nil for "unset / unlimited"
local function opt(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end

-- Server time in seconds, never running backwards: `last_s` is the org's high-water mark (its
-- "clock" field, read by the caller along with the rest of the org hash); the second value is
-- true when it moved, and the caller writes it back. A test may pin the time: `pinned` is the
-- script's argument as sent, "0" when not pinned; a pinned time bypasses the clamp.
local function clock_at(last_s, pinned)
  if pinned and pinned ~= '0' then
    local t = tonumber(pinned)
    if t and t > 0 then return t, false end
  end
  local now = tonumber(redis.call('TIME')[1])
  local last = num(last_s)
  if now < last then return last, false end
  return now, now > last
end

-- a < b for two decimal strings of non-negative integers without leading zeros (epoch
-- seconds, amounts as stored): compared as strings, since a conversion to a number costs a
-- strtod (about 1,700 instructions)
local function dlt(a, b)
  return #a < #b or (#a == #b and a < b)
end

-- clock_at, as a decimal string (the time is mostly compared and written back, not added
-- to): the server's time, or the org's high-water mark when it is later, or the pinned time
local function clock_str(last_s, pinned)
  if pinned ~= '0' then return pinned, false end
  local now_s = redis.call('TIME')[1]
  if last_s and dlt(now_s, last_s) then return last_s, false end
  return now_s, now_s ~= last_s
end

-- the same, for a script that does not read the org hash otherwise
local function clock_now(org_key, pinned)
  return clock_at(redis.call('HGET', org_key, 'clock'), pinned)
end

-- Calendar arithmetic on integer-valued doubles: a floored division is (a - a % b) / b,
-- exact, and done by the VM (no function call per division: this runs in every admission
-- and settlement).

-- days since 1970-01-01 -> year, month (Howard Hinnant's civil_from_days)
local function civil(days)
  local z = days + 719468
  local doe = z % 146097
  local era = (z - doe) / 146097
  local t = doe - (doe - doe % 1460) / 1460 + (doe - doe % 36524) / 36524
    - (doe - doe % 146096) / 146096
  local yoe = (t - t % 365) / 365
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + (yoe - yoe % 4) / 4 - (yoe - yoe % 100) / 100)
  local u = 5 * doy + 2
  local mp = (u - u % 153) / 153
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local yoe = y % 400
  local era = (y - yoe) / 400
  local mp = m > 2 and m - 3 or m + 9
  local v = 153 * mp + 2
  local doy = (v - v % 5) / 5 + d - 1
  local doe = yoe * 365 + (yoe - yoe % 4) / 4 - (yoe - yoe % 100) / 100 + doy
  return era * 146097 + doe - 719468
end

-- the calendar month (UTC) of an epoch second: "YYYY-MM", and the epoch second it ends
local function month_of(now)
  local y, m = civil((now - now % 86400) / 86400)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * 86400
end

-- month_of(now_s) as strings: the caller's month (hint, its first second and the first of
-- the next) when now_s falls inside it, else computed
local function period_at(now_s, hint, start_s, end_s)
  if not dlt(now_s, start_s) and dlt(now_s, end_s) then return hint, end_s end
  local period, month_end = month_of(tonumber(now_s))
  return period, fmt(month_end)
end

-- a monthly counter stored as (period, value): its value in `period` as stored (a plain
-- integer), "0" once the month moved on
local function in_period(p, v, period)
  if p == period and v then return v end
  return '0'
end

-- add to a monthly counter, restarting it when the month moved on (no job at midnight);
-- `amount` as formatted by fmt()
local function add_in_period(key, pfield, vfield, stored_p, period, amount)
  if stored_p == period then
    redis.call('HINCRBY', key, vfield, amount)
  else
    redis.call('HSET', key, pfield, period, vfield, amount)
  end
end

-- field/value pairs appended to `w`, for one HSET of all a script changes in a hash
local function put(w, ...)
  local n, args = #w, { ... }
  for i = 1, #args do w[n + i] = args[i] end
end

-- one HSET of the field/value pairs in `w` (none: no call)
local function hset_all(key, w)
  if #w > 0 then redis.call('HSET', key, unpack(w)) end
end

-- a credential's value: "<member>|<id>|<generation>" (the member's generation when it was
-- issued; a value written before generations has none, read as "")
local function split3(v)
  local a = string.find(v, '|', 1, true)
  if not a then return nil, nil, nil end
  local b = string.find(v, '|', a + 1, true)
  if not b then return string.sub(v, 1, a - 1), string.sub(v, a + 1), '' end
  return string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, b + 1)
end

local function fail(code, detail)
  return cjson.encode({ ok = 0, err = code, detail = detail or '' })
end

-- An operation's record (model.py, Op). Reserved: the admission's answer itself, as it was
-- answered ("|"-joined in the order of admission.py's FULL_FIELDS, status "1", decision
-- "allow"): "1|allow|<mode>|<reason>|<amount>|<tier>|<member>|...". Returns the amount held,
-- the mode, the tier and the member; nil for a record in another state.
-- A record written by the version before (its JSON answer, a newline, then
-- "r|<amount>|<mode>|<tier>|<member>") is read too, while a rollout mixes the two (a check
-- API reservation made on a proxy of that version, settled on this one; a journal replayed
-- across the upgrade): then the fifth value is where its answer ends.
local function reserved(raw)
  local mode, a, tier, mid = string.match(raw, '^1|allow|([%w_]+)|[^|]*|(%d+)|([^|]*)|([^|]*)|')
  if mode then return a, mode, tier, mid end
  local nl = string.find(raw, '\n', 1, true)
  if not nl or string.sub(raw, 1, 1) ~= '{' then return nil end
  a, mode, tier, mid = string.match(raw, '^r|(%d+)|([%w_]+)|([^|]*)|(.*)$', nl + 1)
  return a, mode, tier, mid, nl
end

-- the packed tails of admit.lua (13 values) and settle.lua (7), "|"-joined (scripts.py), and
-- what each has split already
local ADMIT_TAIL = '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$'
local SETTLE_TAIL = '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$'
local ADMIT_TAILS = {}
local SETTLE_TAILS = {}

-- a packed tail's values (a list), split by `pattern` once and kept in `cache` by its text:
-- a tail's values come from a small set (flags, the proxy's settings, the month), so nearly
-- every call finds its tail split already (13 captures cost about 14,000 instructions; a
-- lookup a few dozen). What is kept is a pure function of the text, the same on every
-- server; at most 256 tails are kept (cache[0] counts them), then the cache starts again.
-- (Run as a script, EVAL, the cache lives for one call: the same values, split each time.)
local function tail_of(cache, packed, pattern)
  local v = cache[packed]
  if v then return v end
  v = { string.match(packed, pattern) }
  local kept = (cache[0] or 0) + 1
  if kept > 256 then
    for k in pairs(cache) do cache[k] = nil end
    kept = 1
  end
  cache[0] = kept
  cache[packed] = v
  return v
end

-- a settled record: "S|" then Op.SETTLED_FIELDS joined by "|" (the member last), as a list;
-- nil for a record in another state
local SETTLED_RECORD = '^S|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$'

local function settled(raw)
  local v = { string.match(raw, SETTLED_RECORD) }
  if #v == 0 then return nil end
  return v
end

-- record a change in the org's audit stream: who made it, as what action, the fields before
-- and after, and when (``now_arg``: the caller's clock, or the server's when it is 0 or less)
local function record_change(audit_k, actor, action, now_arg, before, after)
  local now = tonumber(now_arg)
  if now <= 0 then now = tonumber(redis.call('TIME')[1]) end
  redis.call('XADD', audit_k, '*', 'ts', fmt(now), 'actor', actor, 'action', action,
    'before', cjson.encode(before), 'after', cjson.encode(after))
end
