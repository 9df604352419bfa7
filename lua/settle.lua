-- settle: charge a request's actual cost, release its reservation, append it to the ledger.
--
-- KEYS[1] org      hash: settings, balance, org and tier spend, reserved total, clock
-- KEYS[2] members  hash: "<member>|<field>"
-- KEYS[3] ops      hash: operation id -> JSON record
-- KEYS[4] due      zset: operation id by when its record expires
-- KEYS[5] ledger   stream: one entry per charge
-- ARGV[1] request_id   the reservation made by admit.lua
-- ARGV[2] cost         nano-USD: the actual cost
-- ARGV[3] model        the model id as requested
-- ARGV[4] usage        JSON: token counts by kind, copied into the ledger entry
-- ARGV[5] pinned_now   epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[6] retention_s  seconds the finished record is kept
-- ARGV[7] source       who charges: proxy | check | journal
-- ARGV[8] estimated    "1" when the usage is the estimate rule's (the answer was cut before
--                      its usage came): the ledger entry says so, and the member's monthly
--                      estimated total counts it
-- Reply: JSON {ok=1, mode, cost, overshoot, reserved, balance, period, member, tier,
-- reload_id, reload_amount, entry, expired, estimated} or
-- {ok=0, err="unknown_reservation"|"released"}.
-- Idempotent by request id: a replay returns the stored result and charges nothing.
-- Included usage goes to the seat windows (the allowance is soft: the whole cost is included);
-- extra usage goes to the member, tier and org monthly spend and, on Team, the balance. The
-- ledger entry is written in the same script, so counters always equal the ledger's sum.

local org_k, mem_k, ops_k, due_k, ledger_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local cost = tonumber(ARGV[2])
local cost_s = fmt(cost)  -- formatted once: every counter and the ledger take it

-- the reservation's record, or nil and the answer (a replay's result, or the refusal)
local function reservation()
  local raw = redis.call('HGET', ops_k, rid)
  if not raw then return nil, fail('unknown_reservation') end
  local rec = cjson.decode(raw)
  if rec.s == 'settled' then
    rec.result.replay = '1'
    return nil, cjson.encode(rec.result)
  end
  if rec.s == 'released' then return nil, fail('released') end
  if rec.s ~= 'r' and rec.s ~= 'x' then return nil, fail('unknown_reservation') end
  return rec
end

-- extra usage: release what was held, add to the member, tier and org month and, on Team,
-- draw the balance, and ask for one reload when it fell to or below the threshold (the
-- pending id blocks the next until it is confirmed). Returns (overshoot, balance delta,
-- balance, reload id, reload amount).
local function charge_extra(rec, held, o, mm, period, now, p)
  local tier = rec.t
  local overshoot = 0
  if cost > held then overshoot = cost - held end  -- an expired reservation holds nothing
  if held > 0 then
    redis.call('HINCRBY', mem_k, p .. 'eu_res', fmt(-held))
    redis.call('HINCRBY', org_k, 'eu_res', fmt(-held))
  end
  add_in_period(mem_k, p .. 'spend_p', p .. 'spend', mm[3], period, cost_s)
  add_in_period(org_k, 'spend_p', 'spend', o[3], period, cost_s)
  add_in_period(org_k, 'tspend_p:' .. tier, 'tspend:' .. tier, o[8], period, cost_s)
  local balance = num(o[2])
  if o[1] ~= 'team' then return overshoot, 0, balance, '', '' end
  balance = redis.call('HINCRBY', org_k, 'balance', fmt(-cost))
  local threshold, ramount = opt(o[5]), num(o[6])
  if o[4] == '1' and (o[7] == false or o[7] == '') and threshold and ramount > 0
      and balance <= threshold then
    local reload_id, reload_amount = 'rl-' .. rid, fmt(ramount)
    redis.call('HSET', ops_k, 'reload:' .. reload_id,
      cjson.encode({ amount = reload_amount, state = 'pending', created = fmt(now) }))
    redis.call('HSET', org_k, 'ar_pending', reload_id)
    return overshoot, -cost, balance, reload_id, reload_amount
  end
  return overshoot, -cost, balance, '', ''
end

-- included usage: the seat windows still open, and the month's included total
local function charge_included(mm, period, now, p)
  if now < num(mm[1]) then redis.call('HINCRBY', mem_k, p .. 's_used', cost_s) end
  if now < num(mm[2]) then redis.call('HINCRBY', mem_k, p .. 'w_used', cost_s) end
  add_in_period(mem_k, p .. 'inc_p', p .. 'inc', mm[4], period, cost_s)
end

-- the settlement: each step above, in order
local rec, answer = reservation()
if not rec then return answer end

local mid, tier, mode = rec.m, rec.t, rec.mode
local p = mid .. '|'
local held = (rec.s == 'r') and num(rec.a) or 0
local o = redis.call('HMGET', org_k, 'plan', 'balance', 'spend_p', 'ar_on', 'ar_threshold',
  'ar_amount', 'ar_pending', 'tspend_p:' .. tier, 'clock')
local plan = o[1] or ''
local now, advanced = clock_at(o[9], ARGV[5])
local period = month_of(now)
local mm = redis.call('HMGET', mem_k, p .. 's_end', p .. 'w_end', p .. 'spend_p', p .. 'inc_p')

if advanced then redis.call('HSET', org_k, 'clock', fmt(now)) end
local overshoot, balance_delta, balance, reload_id, reload_amount = 0, 0, num(o[2]), '', ''
if mode == 'extra_usage' then
  overshoot, balance_delta, balance, reload_id, reload_amount =
    charge_extra(rec, held, o, mm, period, now, p)
else
  charge_included(mm, period, now, p)
end

local estimated = ARGV[8] == '1'
local entry
if estimated then
  add_in_period(mem_k, p .. 'est_p', p .. 'est', redis.call('HGET', mem_k, p .. 'est_p'), period,
    cost_s)
  entry = redis.call('XADD', ledger_k, '*', 'op', rid, 'kind', 'usage', 'ts', fmt(now),
    'period', period, 'member', mid, 'tier', tier, 'mode', mode, 'model', ARGV[3],
    'cost', cost_s, 'balance_delta', fmt(balance_delta), 'usage', ARGV[4], 'source', ARGV[7],
    'estimated', '1')
else
  entry = redis.call('XADD', ledger_k, '*', 'op', rid, 'kind', 'usage', 'ts', fmt(now),
    'period', period, 'member', mid, 'tier', tier, 'mode', mode, 'model', ARGV[3],
    'cost', cost_s, 'balance_delta', fmt(balance_delta), 'usage', ARGV[4], 'source', ARGV[7])
end

-- the result and the settled record, written out as JSON (see jstr; the amount and expiry
-- come from the record admit.lua wrote: integers)
local mid_j, tier_j, mode_j, reload_j = jstr4(mid, tier, mode, reload_id)
local out = '{"ok":1,"mode":"' .. mode_j .. '","cost":"' .. cost_s .. '","overshoot":"'
  .. fmt(overshoot) .. '","reserved":"' .. rec.a .. '","balance":"'
  .. (plan == 'team' and fmt(balance) or '') .. '","period":"' .. period .. '","member":"'
  .. mid_j .. '","tier":"' .. tier_j .. '","reload_id":"' .. reload_j
  .. '","reload_amount":"' .. reload_amount .. '","entry":"' .. entry .. '","expired":"'
  .. (rec.s == 'x' and '1' or '0') .. '","estimated":"' .. (estimated and '1' or '0') .. '"}'
-- the record with the result in it (the admission's answer only serves replays of the
-- admission itself: not kept, so that a record kept for the retention period is a few
-- hundred bytes)
redis.call('HSET', ops_k, rid, '{"s":"settled","m":"' .. mid_j .. '","t":"' .. tier_j
  .. '","mode":"' .. mode_j .. '","a":"' .. rec.a .. '","exp":"' .. rec.exp
  .. '","result":' .. out .. '}')
redis.call('HDEL', ops_k, 'a:' .. rid)
redis.call('ZADD', due_k, fmt(now + tonumber(ARGV[6])), rid)
return out
