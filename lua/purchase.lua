-- purchase: add prepaid credit to a Team org's balance (a purchase or a confirmed reload).
--
-- KEYS[1] org     hash: plan, balance, pending reload, clock
-- KEYS[2] ledger  stream: one entry per credit
-- KEYS[3] audit   stream: the balance before and after
-- KEYS[4] op      string: the operation's record ("op:purchase:<key>" / "op:reload:<id>"),
--                 JSON
-- ARGV[1] kind         "purchase" | "reload"
-- ARGV[2] op_id        "purchase:<idempotency key>" | "reload:<reload id>"
-- ARGV[3] amount       nano-USD (a purchase; a reload's amount is the one stored when it was
--                      requested)
-- ARGV[4] actor        who: the ledger entry's source and the audit's actor
-- ARGV[5] pinned_now   epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[6] window_s     seconds the finished record is kept, for replays
-- Reply: JSON {ok=1, amount, balance, entry, replay?} or {ok=0, err}.
-- Idempotent by operation id: a replay returns the stored result and adds nothing; the same
-- idempotency key with another amount is a conflict.

local function purchase(KEYS, ARGV)
  local org_k, ledger_k, audit_k, op_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local kind, opid = ARGV[1], ARGV[2]
  local plan = redis.call('HGET', org_k, 'plan')
  if not plan then return fail('unknown_org') end
  if plan ~= 'team' then return fail('not_team') end

  local raw = redis.call('GET', op_k)
  local rec = raw and cjson.decode(raw) or nil
  local amount
  if kind == 'purchase' then
    amount = tonumber(ARGV[3])
    if rec then
      if rec.amount ~= ARGV[3] then return fail('idempotency_conflict') end
      rec.result.replay = '1'
      return cjson.encode(rec.result)
    end
  else
    if not rec then return fail('unknown_reload') end
    if rec.state == 'confirmed' then
      rec.result.replay = '1'
      return cjson.encode(rec.result)
    end
    amount = tonumber(rec.amount)
  end

  local now, advanced = clock_now(org_k, ARGV[5])
  local period = month_of(now)
  if advanced then redis.call('HSET', org_k, 'clock', fmt(now)) end
  local balance = redis.call('HINCRBY', org_k, 'balance', fmt(amount))
  local entry = redis.call('XADD', ledger_k, '*', 'op', opid, 'kind', kind, 'ts', fmt(now),
    'period', period, 'member', '', 'tier', '', 'mode', '', 'model', '', 'cost', '0',
    'balance_delta', fmt(amount), 'usage', '{}', 'source', ARGV[4])
  redis.call('XADD', audit_k, '*', 'ts', fmt(now), 'actor', ARGV[4],
    'action', kind == 'purchase' and 'credit.purchase' or 'credit.reload_confirm',
    'before', cjson.encode({ balance = fmt(balance - amount) }),
    'after', cjson.encode({ balance = fmt(balance) }))
  local result = { ok = 1, amount = fmt(amount), balance = fmt(balance), entry = entry }
  if kind == 'purchase' then
    rec = { amount = ARGV[3], result = result }
  else
    rec.state = 'confirmed'
    rec.result = result
    if redis.call('HGET', org_k, 'ar_pending') == string.sub(opid, 8) then
      redis.call('HDEL', org_k, 'ar_pending')
    end
  end
  redis.call('SET', op_k, cjson.encode(rec), 'EX', ARGV[6])
  return cjson.encode(result)
end
