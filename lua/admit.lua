-- admit: decide one request (included / extra usage / deny) and reserve its cost, atomically.
--
-- KEYS[1] org            hash: settings, balance, org spend, reserved total, clock
-- KEYS[2] members        hash: "<member>|<field>" for every member of the org
-- KEYS[3] creds          hash: "k:<sha256 of proxy key>" -> "<member>|<key id>"
-- KEYS[4] due            zset: the org's live extra-usage reservations,
--                        "<amount>|<member>|<operation id>" scored by when they expire
-- KEYS[5] op             string: this request's record (model.py, Op), for replays
-- ARGV[1]  request_id         the operation id
-- ARGV[2]  who                "k": ARGV[3] is a proxy key hash; "m": a member id (check API)
-- ARGV[3]  credential         the proxy key's sha256, or the member id
-- ARGV[4]  max_cost           nano-USD: strict upper bound of the request
-- ARGV[5]  est_cost           nano-USD: the estimate policy's reservation
-- ARGV[6]  tail               these, joined by "|":
-- ARGV[6].1  policy             default reservation policy: strict | estimate | none (an org
--                               may override it)
-- ARGV[6].2  reservation_ttl_s  seconds
-- ARGV[6].3  accept             "1" when the member accepts extra usage for this request
-- ARGV[6].4  reserve            "1" to reserve; "0" to answer without writing (status, check)
-- ARGV[6].5  pinned_now         epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[6].6  window_s           seconds a finished operation's record is kept, for replays
-- ARGV[6].7  force              "1" to admit usage journaled while Redis was down (the
--                               request already ran): included while the seat allows, else
--                               extra usage when the org and member have it (past any
--                               limit), else included past the seat allowance
-- ARGV[6].8  lean               "1" for the lean answer when allowed: the decision, the
--                               member, the upstream credential and policy, and what the
--                               unified rate-limit headers show; a denial gets the whole one
-- ARGV[6].9  unbounded          "1" when a server tool of the request has no bound (a web
--                               search without max_uses): strict cannot run it on extra usage
-- ARGV[6].10 period             "YYYY-MM": the month of the caller's clock, taken when the
-- ARGV[6].11 period_start       script's own time falls in [period_start, period_end) (epoch
-- ARGV[6].12 period_end         seconds), else computed (month_of)
-- ARGV[6].13 tiers              ";name,session_allowance,weekly_allowance,session_s,weekly_s"
--                               per tier (nano-USD, seconds)
-- Reply: JSON {ok=0, err, detail} for an unknown key/member/org/tier or a disabled member or
-- org; else the decision, its values joined by "|" in the order of admission.py's
-- LEAN_FIELDS, then (a denial, or not lean) of the rest of FULL_FIELDS: a status ("1"; "2"
-- for a replay), d, mode, reason, amount, tier, member, ... — every amount a decimal string,
-- every value as stored (no value the admin API lets in holds a "|"; the caller counts the
-- values and refuses an answer of any other length). The window that binds (claim) is
-- derived by the caller from the windows answered. The answer of a reservation is also its
-- record (model.py, Op): written once, read by settle, release and renew (lib's reserved).
-- Idempotent: a replayed request id returns the stored decision and writes nothing.
-- Writes happen only after every check; reclaiming expired reservations comes first and is
-- correct on its own. The record expires reservation_ttl_s + window_s after the admission
-- (renew.lua moves it on while the request runs); what it holds is in model.py (Op).
-- Numbers stay decimal strings where only compared (dlt): a conversion costs a strtod.

-- Helpers are made once (the library is loaded once): what a call knows comes in as arguments.

-- a request id seen before: the answer it got, or the refusal of a spent id (nil: new).
-- `member`: the member the check API names ("m"), nil for a proxy key
local function admit_replayed(op_k, member)
  local prior = redis.call('GET', op_k)
  if not prior then return nil end
  local a, _, _, m, nl = reserved(prior)
  local done = nil
  if not a then
    done = settled(prior)
    m = done and done[13]
  end
  -- the check API names the member: a request id is its member's, never another's
  if member and m and m ~= member then return fail('request_id_taken') end
  -- the decision as answered (the record until it is settled or released), status "2"; a
  -- record of the version before answers its JSON, marked as a replay
  if nl then return string.sub(prior, 1, nl - 2) .. ',"replay":"1"}' end
  if a then return '2' .. string.sub(prior, 2) end
  -- already settled or released: this request id is spent
  return fail('duplicate_id', done and 'settled' or 'released')
end

-- who asks: (member id, key id, the member's generation the key was issued in; nil for a
-- member id, which the check API names itself), or nil and the refusal
local function identify(cred_k, who, credential)
  if who ~= 'k' then return credential, '', nil end
  local v = redis.call('HGET', cred_k, 'k:' .. credential)
  if not v then return nil, fail('unknown_key') end
  return split3(v)
end

-- give back the reservations of crashed proxies that are past their TTL (at most 16 a call),
-- looked for only once the org's "rc" (no reservation expires before it) has passed. Each
-- entry of "due" names its amount and member: its record is not read (a settlement that
-- finds its entry gone knows it was reclaimed). Returns the org's reserved total less what
-- it gave back, the org's "rc" ('' for none held) and whether it changed.
local function reclaim(org_k, mem_k, due_k, now_s, org_res, rc)
  if rc == false then return org_res, '', false end
  if dlt(now_s, rc) then return org_res, rc, false end
  local due = redis.call('ZRANGEBYSCORE', due_k, '-inf', now_s, 'LIMIT', '0', '16')
  for _, entry in ipairs(due) do
    local a, m = string.match(entry, '^(%d+)|([^|]*)|')
    if a then  -- (an entry of another form holds nothing: it is only taken out)
      redis.call('HINCRBY', mem_k, m .. '|eu_res', '-' .. a)
      org_res = org_res - tonumber(a)
    end
  end
  if #due > 0 then
    redis.call('ZREM', due_k, unpack(due))
    redis.call('HSET', org_k, 'eu_res', fmt(org_res))
  end
  local first = redis.call('ZRANGE', due_k, '0', '0', 'WITHSCORES')
  return org_res, first[2] or '', true
end

-- the seat allowance: each window opens with the first admitted request when none is open.
-- The tier's numbers are found by name (";<tier>,"), not by parsing every tier. Every value
-- is also returned as the string the answer carries: the stored one where it is unchanged
-- (every number in these hashes is a plain integer), so no formatting per request. Returns
-- nil when the tier is not configured, else (session allowance, weekly allowance, each
-- window's used and reset, whether each is open, whether the seat allows).
local function windows(tiers, now_s, tier, m)
  local at = string.find(tiers, ';' .. tier .. ',', 1, true)
  if not at then return nil end
  local sa_s, wa_s, sl_s, wl_s = string.match(tiers, '^(%d+),(%d+),(%d+),(%d+)', at + #tier + 2)
  if not sa_s then return nil end
  local s_open, w_open = m[3] and dlt(now_s, m[3]), m[5] and dlt(now_s, m[5])
  local s_used_s = s_open and (m[4] or '0') or '0'
  local w_used_s = w_open and (m[6] or '0') or '0'
  local s_reset_s = s_open and m[3] or fmt(tonumber(now_s) + tonumber(sl_s))
  local w_reset_s = w_open and m[5] or fmt(tonumber(now_s) + tonumber(wl_s))
  return sa_s, wa_s, s_used_s, s_reset_s, s_open, w_used_s, w_reset_s, w_open,
    dlt(s_used_s, sa_s) and dlt(w_used_s, wa_s)
end

-- conditions 1 and 2 of extra usage: on for the org, on for the member ('' when both hold)
local function eu_condition(plan, o, m, member_limit)
  if o[2] ~= '1' then return 'org_level_disabled' end
  if plan == 'team' and o[3] == 'selected' and m[11] ~= '1' then
    return 'member_level_disabled'
  end
  if plan == 'enterprise' and member_limit == 0 then return 'member_level_disabled' end
  return ''
end

-- condition 4, one limit: folds `limit` (named `name`, with `used` spent and `held` reserved
-- under it) into what the limits before it gave: the least room left under any (nil:
-- unlimited), the first that refuses ('' none) and whether a strict maximum (`max_s`, nano-USD
-- as sent, converted only for strict) fits ('1'/'0'). Called once per applicable limit and
-- the balance, in order (no table per limit).
local function limit_room(policy, max_s, remaining, limit_reason, fits, name, limit, used, held)
  local room
  if policy == 'none' then room = limit - used else room = limit - used - held end
  if remaining == nil or room < remaining then remaining = room end
  if limit_reason == '' then
    if room <= 0 then
      limit_reason = name
    elseif policy == 'strict' and room < tonumber(max_s) then
      limit_reason, fits = name, '0'
    end
  end
  return remaining, limit_reason, fits
end

-- the decision: (decision, mode, reason, amount to reserve); `max_s`/`est_s`: the strict
-- and estimate amounts as sent, `force`: "1" for a request that already ran
local function decide(policy, seat_ok, eu_available, eu_reason, eu_disabled, remaining, max_s,
                      est_s, force)
  if seat_ok then return 'allow', 'included', '', 0 end
  if eu_available then
    local amount = 0
    if policy == 'strict' then
      amount = tonumber(max_s)
    elseif policy == 'estimate' then
      amount = tonumber(est_s)
      if remaining ~= nil and remaining < amount then amount = remaining end
    end
    return 'allow', 'extra_usage', '', amount
  end
  if force == '1' then  -- forced: the request already ran
    return 'allow', (eu_reason == '') and 'extra_usage' or 'included', '', 0
  end
  return 'deny', '', eu_disabled, 0
end

-- the admission: each step above, in order
local function admit(KEYS, ARGV)
  local org_k, mem_k, cred_k, due_k, op_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local rid = ARGV[1]
  local policy_default, ttl_s, accept, reserve_s, pinned, window_s, force, lean, unbounded,
    period_hint, period_start, period_end, tiers = unpack(tail_of(ADMIT_TAILS, ARGV[6], ADMIT_TAIL))
  local reserve = reserve_s == '1'

  if reserve then
    local prior = admit_replayed(op_k, ARGV[2] == 'm' and ARGV[3] or nil)
    if prior then return prior end
  end

  -- the org's fields; what only the whole answer shows (15, 16) is read when it is asked for
  -- (a lean denial reads it then)
  local o
  if lean == '1' then
    o = redis.call('HMGET', org_k, 'plan', 'eu_on', 'scope', 'consent', 'limit', 'balance',
      'eu_res', 'spend_p', 'spend', 'policy', 'upstream', 'enabled', 'clock', 'rc')
  else
    o = redis.call('HMGET', org_k, 'plan', 'eu_on', 'scope', 'consent', 'limit', 'balance',
      'eu_res', 'spend_p', 'spend', 'policy', 'upstream', 'enabled', 'clock', 'rc', 'ar_pending',
      'requests_on')
  end
  local plan = o[1]
  if not plan then return fail('unknown_org') end
  if o[12] == '0' then return fail('org_disabled') end

  local mid, kid, kgen = identify(cred_k, ARGV[2], ARGV[3])
  if not mid then return kid end

  local now_s, advanced = clock_str(o[13], pinned)
  local period, month_end_s = period_at(now_s, period_hint, period_start, period_end)
  local org_res, rc, rc_moved = reclaim(org_k, mem_k, due_k, now_s, num(o[7]), o[14])

  local p = mid .. '|'
  -- the member's fields; the role (14) only for the whole answer, as above
  local m
  if lean == '1' then
    m = redis.call('HMGET', mem_k, p .. 'tier', p .. 'enabled', p .. 's_end', p .. 's_used',
      p .. 'w_end', p .. 'w_used', p .. 'spend_p', p .. 'spend', p .. 'eu_res', p .. 'limit',
      p .. 'eu', p .. 'consent', p .. 'gen')
  else
    m = redis.call('HMGET', mem_k, p .. 'tier', p .. 'enabled', p .. 's_end', p .. 's_used',
      p .. 'w_end', p .. 'w_used', p .. 'spend_p', p .. 'spend', p .. 'eu_res', p .. 'limit',
      p .. 'eu', p .. 'consent', p .. 'gen', p .. 'role')
  end
  local tier = m[1]
  if not tier then return fail('unknown_member', mid) end
  -- a key issued before its member was removed is dead, even if the member is added again
  if kgen and kgen ~= (m[13] or '') then return fail('unknown_key') end
  if m[2] == '0' then return fail('member_disabled', mid) end
  local sa_s, wa_s, s_used_s, s_reset_s, s_open, w_used_s, w_reset_s, w_open, seat_ok =
    windows(tiers, now_s, tier, m)
  if not sa_s then return fail('unknown_tier', tier) end

  -- extra usage: the conditions, then every applicable limit and the balance
  local policy = o[10] or policy_default
  local m_spend_s = in_period(m[7], m[8], period)
  local org_spend_s = in_period(o[8], o[9], period)
  local m_spend, org_spend = num(m_spend_s), num(org_spend_s)
  local m_res = num(m[9])
  local member_limit = (plan == 'enterprise') and opt(m[10]) or nil
  local tier_limit = nil
  if plan == 'enterprise' then tier_limit = opt(redis.call('HGET', org_k, 'tlimit:' .. tier)) end
  local org_limit = opt(o[5])
  local balance = num(o[6])
  local consent_mode = o[4]
    or (plan == 'team' and DEFAULT_CONSENT_TEAM or DEFAULT_CONSENT_ENTERPRISE)
  local eu_reason = eu_condition(plan, o, m, member_limit)

  local max_s, remaining, limit_reason, fits = ARGV[4], nil, '', '1'
  if member_limit then
    remaining, limit_reason, fits = limit_room(policy, max_s, remaining, limit_reason, fits,
      'member_spend_limit', member_limit, m_spend, m_res)
  end
  if tier_limit then
    remaining, limit_reason, fits = limit_room(policy, max_s, remaining, limit_reason, fits,
      'seat_tier_spend_limit', tier_limit, m_spend, m_res)
  end
  if org_limit then
    remaining, limit_reason, fits = limit_room(policy, max_s, remaining, limit_reason, fits,
      'org_spend_limit', org_limit, org_spend, org_res)
  end
  if plan == 'team' then
    remaining, limit_reason, fits = limit_room(policy, max_s, remaining, limit_reason, fits,
      'out_of_credits', balance, 0, org_res)
  end

  -- condition 3: consent
  local consent_ok = consent_mode ~= 'required' or m[12] == '1' or accept == '1'
  local eu_available = eu_reason == '' and limit_reason == '' and consent_ok
  local eu_disabled = eu_reason
  if eu_disabled == '' and not consent_ok then eu_disabled = 'consent_required' end
  if eu_disabled == '' then eu_disabled = limit_reason end

  local decision, mode, reason, amount = decide(policy, seat_ok, eu_available, eu_reason,
    eu_disabled, remaining, ARGV[4], ARGV[5], force)
  -- strict bounds every cost: a request whose server tools have no bound cannot run on it
  if mode == 'extra_usage' and policy == 'strict' and unbounded == '1' and force ~= '1' then
    return fail('unbounded_server_tool')
  end

  -- the answer, its values joined by "|" (admission.py's LEAN_FIELDS, then FULL_FIELDS):
  -- the rest of the decision first (for the check API and every denial), then what every
  -- answer carries (the proxy's lean answer when allowed)
  local rest = ''
  if decision ~= 'allow' or lean ~= '1' then
    if lean == '1' then  -- a lean denial: what the whole answer adds
      local more = redis.call('HMGET', org_k, 'ar_pending', 'requests_on')
      o[15], o[16], m[14] = more[1], more[2], redis.call('HGET', mem_k, p .. 'role')
    end
    rest = '|' .. rid .. '|' .. plan .. '|' .. kid .. '|' .. (m[14] or DEFAULT_ROLE) .. '|'
      .. now_s .. '|' .. period .. '|' .. (o[2] == '1' and '1' or '0') .. '|'
      .. (remaining and fmt(remaining) or '') .. '|' .. fits .. '|' .. consent_mode .. '|'
      .. (m[12] == '1' and '1' or '0') .. '|' .. (plan == 'team' and fmt(balance) or '') .. '|'
      .. fmt(m_res) .. '|' .. (o[16] or DEFAULT_REQUESTS_ON) .. '|' .. (o[15] or '')
  end
  local answer = '1|' .. decision .. '|' .. mode .. '|' .. reason .. '|' .. fmt(amount) .. '|'
    .. tier .. '|' .. mid .. '|' .. (o[11] or '') .. '|' .. policy .. '|' .. s_used_s .. '|'
    .. sa_s .. '|' .. s_reset_s .. '|' .. w_used_s .. '|' .. wa_s .. '|' .. w_reset_s .. '|'
    .. (eu_available and '1' or '0') .. '|' .. eu_disabled .. '|' .. month_end_s .. '|'
    .. m_spend_s .. '|' .. org_spend_s .. '|' .. (member_limit and fmt(member_limit) or '')
    .. '|' .. (tier_limit and fmt(tier_limit) or '') .. '|' .. (org_limit and fmt(org_limit) or '')
    .. rest

  if decision ~= 'allow' or not reserve then
    if rc_moved then
      if rc == '' then redis.call('HDEL', org_k, 'rc') else redis.call('HSET', org_k, 'rc', rc) end
    end
    return answer
  end

  -- what the admission moves, as field/value pairs (one HSET per hash), then the record: the
  -- answer itself
  local ow, mw = {}, {}
  if advanced then put(ow, 'clock', now_s) end
  -- a window opened now ends at its reset, as answered
  if not s_open then put(mw, p .. 's_end', s_reset_s, p .. 's_used', '0') end
  if not w_open then put(mw, p .. 'w_end', w_reset_s, p .. 'w_used', '0') end
  local ttl = tonumber(ttl_s)
  if mode == 'extra_usage' and amount > 0 then
    local amount_s = fmt(amount)
    put(ow, 'eu_res', fmt(org_res + amount))
    put(mw, p .. 'eu_res', fmt(m_res + amount))
    local exp = tonumber(now_s) + ttl
    redis.call('ZADD', due_k, exp, amount_s .. '|' .. mid .. '|' .. rid)
    if rc == '' or num(rc) > exp then rc, rc_moved = fmt(exp), true end
  end
  if rc_moved then
    if rc == '' then redis.call('HDEL', org_k, 'rc') else put(ow, 'rc', rc) end
  end
  hset_all(org_k, ow)
  hset_all(mem_k, mw)
  redis.call('SET', op_k, answer, 'EX', ttl + tonumber(window_s))
  return answer
end
