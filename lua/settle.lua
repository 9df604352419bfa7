-- settle: charge a request's actual cost, release its reservation, append it to the ledger.
--
-- KEYS[1] org      hash: settings, balance, org and tier spend, reserved total, clock
-- KEYS[2] members  hash: "<member>|<field>"
-- KEYS[3] due      zset: the live extra-usage reservations ("<amount>|<member>|<id>")
-- KEYS[4] ledger   stream: one entry per charge
-- KEYS[5] op       string: the request's record (model.py, Op)
-- ARGV[1] request_id   the reservation made by admit.lua
-- ARGV[2] cost         nano-USD: the actual cost
-- ARGV[3] model        the model id as requested
-- ARGV[4] usage        JSON: token counts by kind, copied into the ledger entry
-- ARGV[5] tail         these, joined by "|":
-- ARGV[5].1 pinned_now    epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[5].2 window_s      seconds the finished record is kept, for replays
-- ARGV[5].3 source        who charges: proxy | check | journal
-- ARGV[5].4 estimated     "1" when the usage is the estimate rule's (the answer was cut
--                         before its usage came): the ledger entry says so, and the
--                         member's monthly estimated total counts it
-- ARGV[5].5 period        "YYYY-MM": the month of the caller's clock, taken when the
-- ARGV[5].6 period_start  script's own time falls in [period_start, period_end) (epoch
-- ARGV[5].7 period_end    seconds), else computed (month_of)
-- Reply: the settled record, "S|" then mode, cost, overshoot, reserved, balance, period,
-- tier, reload_id, reload_amount, entry, expired, estimated, member joined by "|" (model.py,
-- Op.SETTLED_FIELDS; the member last), or JSON {ok=0, err="unknown_reservation"|"released"}.
-- Idempotent by request id: a replay answers the stored result, marked "2" in front
-- ("2S|..."), and charges nothing.
-- Included usage goes to the seat windows (the allowance is soft: the whole cost is included);
-- extra usage goes to the member, tier and org monthly spend and, on Team, the balance. The
-- ledger entry is written in the same script, so counters always equal the ledger's sum.

-- Helpers are made once (the library is loaded once): what a call knows comes in as arguments.

-- the reservation's record: (amount, mode, tier, member), or nil and the answer (a replay's:
-- the settled record as it was answered, marked "2"; or the refusal)
local function reservation(op_k)
  local raw = redis.call('GET', op_k)
  if not raw then return nil, fail('unknown_reservation') end
  local a, mode, tier, mid = reserved(raw)
  if a then return a, mode, tier, mid end
  if string.sub(raw, 1, 2) == 'S|' then return nil, '2' .. raw end
  if raw == 'R' then return nil, fail('released') end
  return nil, fail('unknown_reservation')
end

-- extra usage: release what was held (`a`: the reservation as recorded, `held`: what it
-- still holds), add `cost_s` to the member, tier and org month and, on Team, draw the
-- balance, and ask for one reload when it fell to or below the threshold (the pending id
-- blocks the next until it is confirmed). Returns (overshoot, balance delta, balance, reload
-- id, reload amount).
local function charge_extra(org_k, mem_k, op_k, rid, cost_s, a, tier, held, o, mm, period,
                            now_s, p)
  local cost = tonumber(cost_s)
  local overshoot = 0
  if cost > held then overshoot = cost - held end  -- an expired reservation holds nothing
  if held > 0 then
    redis.call('HINCRBY', mem_k, p .. 'eu_res', '-' .. a)
    redis.call('HINCRBY', org_k, 'eu_res', '-' .. a)
  end
  add_in_period(mem_k, p .. 'spend_p', p .. 'spend', mm[1], period, cost_s)
  add_in_period(org_k, 'spend_p', 'spend', o[4], period, cost_s)
  add_in_period(org_k, 'tspend_p:' .. tier, 'tspend:' .. tier, o[9], period, cost_s)
  local balance = num(o[2])
  if o[1] ~= 'team' then return overshoot, 0, balance, '', '' end
  -- the draw: "-<cost>", never "-0" (HINCRBY refuses it, after this script's writes)
  balance = redis.call('HINCRBY', org_k, 'balance', cost_s == '0' and '0' or '-' .. cost_s)
  local threshold, ramount = opt(o[6]), num(o[7])
  if o[5] == '1' and (o[8] == false or o[8] == '') and threshold and ramount > 0
      and balance <= threshold then
    local reload_id, reload_amount = 'rl-' .. rid, fmt(ramount)
    -- the reload's own operation key, beside this one (same prefix, same slot); pending
    -- until it is confirmed, and only one at a time (ar_pending)
    redis.call('SET', string.sub(op_k, 1, #op_k - #rid) .. 'reload:' .. reload_id,
      cjson.encode({ amount = reload_amount, state = 'pending', created = now_s }))
    redis.call('HSET', org_k, 'ar_pending', reload_id)
    return overshoot, -cost, balance, reload_id, reload_amount
  end
  return overshoot, -cost, balance, '', ''
end

-- included usage: the seat windows still open, and the month's included total
local function charge_included(mem_k, cost_s, mm, period, now_s, p)
  if mm[1] and dlt(now_s, mm[1]) then redis.call('HINCRBY', mem_k, p .. 's_used', cost_s) end
  if mm[2] and dlt(now_s, mm[2]) then redis.call('HINCRBY', mem_k, p .. 'w_used', cost_s) end
  add_in_period(mem_k, p .. 'inc_p', p .. 'inc', mm[3], period, cost_s)
end

local function settle(KEYS, ARGV)
  local org_k, mem_k, due_k, ledger_k, op_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local rid = ARGV[1]
  local cost_s = ARGV[2]  -- a decimal integer as the caller wrote it: every counter takes it
  local pinned, window_s, source, est_flag, period_hint, period_start, period_end =
    unpack(tail_of(SETTLE_TAILS, ARGV[5], SETTLE_TAIL))

  -- the settlement: each step above, in order
  local a, mode, tier, mid = reservation(op_k)
  if not a then return mode end  -- (the answer)

  local p = mid .. '|'
  -- held while its entry is in "due" (an admission past its expiry took it out: reclaimed)
  local expired, held = '0', 0
  if a ~= '0' then
    if redis.call('ZREM', due_k, a .. '|' .. mid .. '|' .. rid) == 1 then
      held = tonumber(a)
    else
      expired = '1'
    end
  end
  -- the org's and the member's fields: on extra usage, its month, balance and reload
  -- settings; included, the seat windows and the month's included total
  local o, mm
  if mode == 'extra_usage' then
    o = redis.call('HMGET', org_k, 'plan', 'balance', 'clock', 'spend_p', 'ar_on',
      'ar_threshold', 'ar_amount', 'ar_pending', 'tspend_p:' .. tier)
    mm = redis.call('HMGET', mem_k, p .. 'spend_p')
  else
    o = redis.call('HMGET', org_k, 'plan', 'balance', 'clock')
    mm = redis.call('HMGET', mem_k, p .. 's_end', p .. 'w_end', p .. 'inc_p')
  end
  local plan = o[1] or ''
  local now_s, advanced = clock_str(o[3], pinned)
  local period = period_at(now_s, period_hint, period_start, period_end)

  if advanced then redis.call('HSET', org_k, 'clock', now_s) end
  -- the balance as stored (a plain integer) unless the charge moved it
  local overshoot_s, delta_s, balance_s, reload_id, reload_amount = '0', '0', o[2] or '0', '', ''
  if mode == 'extra_usage' then
    local overshoot, balance_delta, balance
    overshoot, balance_delta, balance, reload_id, reload_amount =
      charge_extra(org_k, mem_k, op_k, rid, cost_s, a, tier, held, o, mm, period, now_s, p)
    overshoot_s, delta_s, balance_s = fmt(overshoot), fmt(balance_delta), fmt(balance)
  else
    charge_included(mem_k, cost_s, mm, period, now_s, p)
  end
  if plan ~= 'team' then balance_s = '' end

  -- the ledger entry: "u" packs what every charge has (model.py, Ledger.PACKED_FIELDS; the
  -- member last), the model and the usage as sent stay fields of their own
  local estimated = est_flag == '1'
  if estimated then
    add_in_period(mem_k, p .. 'est_p', p .. 'est', redis.call('HGET', mem_k, p .. 'est_p'), period,
      cost_s)
  end
  local entry = redis.call('XADD', ledger_k, '*', 'op', rid, 'u', now_s .. '|' .. period .. '|'
    .. mode .. '|' .. cost_s .. '|' .. delta_s .. '|' .. source .. '|' .. est_flag .. '|' .. tier
    .. '|' .. mid, 'model', ARGV[3], 'usage', ARGV[4])

  -- the result: the settled record, its values joined by "|" in the order of model.py's
  -- Op.SETTLED_FIELDS, kept for the replay window and answered as it is
  local record = 'S|' .. mode .. '|' .. cost_s .. '|' .. overshoot_s .. '|' .. a .. '|'
    .. balance_s .. '|' .. period .. '|' .. tier .. '|' .. reload_id .. '|' .. reload_amount
    .. '|' .. entry .. '|' .. expired .. '|' .. est_flag .. '|' .. mid
  redis.call('SET', op_k, record, 'EX', window_s)
  return record
end
