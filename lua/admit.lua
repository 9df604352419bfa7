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
local function windows(tiers, now_s, tier, s_end, s_used, w_end, w_used)
  local at = string.find(tiers, ';' .. tier .. ',', 1, true)
  if not at then return nil end
  local sa_s, wa_s, sl_s, wl_s = string.match(tiers, '^(%d+),(%d+),(%d+),(%d+)', at + #tier + 2)
  if not sa_s then return nil end
  local s_open, w_open = s_end and dlt(now_s, s_end), w_end and dlt(now_s, w_end)
  local s_used_s = s_open and (s_used or '0') or '0'
  local w_used_s = w_open and (w_used or '0') or '0'
  local s_reset_s = s_open and s_end or fmt(tonumber(now_s) + tonumber(sl_s))
  local w_reset_s = w_open and w_end or fmt(tonumber(now_s) + tonumber(wl_s))
  return sa_s, wa_s, s_used_s, s_reset_s, s_open, w_used_s, w_reset_s, w_open,
    dlt(s_used_s, sa_s) and dlt(w_used_s, wa_s)
end

-- conditions 1 and 2 of extra usage: on for the org, on for the member ('' when both hold)
local function eu_condition(plan, eu_on, scope, member_eu, member_limit)
  if eu_on ~= '1' then return 'org_level_disabled' end
  if plan == 'team' and scope == 'selected' and member_eu ~= '1' then
    return 'member_level_disabled'
  end
  if plan == 'enterprise' and member_limit == 0 then return 'member_level_disabled' end
  return ''
end

-- the monthly limits that apply (nil: none): Enterprise's member and seat-tier limits, and
-- the org's
local function limits_of(org_k, plan, tier, member_limit_s, org_limit_s)
  if plan ~= 'enterprise' then return nil, nil, opt(org_limit_s) end
  return opt(member_limit_s), opt(redis.call('HGET', org_k, 'tlimit:' .. tier)), opt(org_limit_s)
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

-- extra usage now: conditions 1 and 2 (on for the org and the member), 4 (every limit that
-- applies and the balance, in admission's order) and 3 (consent). Returns (whether it is available; why not, ''
-- when it is: the condition first, then consent, then the first limit that refuses; the
-- condition alone; the least room left, nil when unlimited; '0' when a strict maximum does
-- not fit)
local function extra_usage(policy, max_s, accept, plan, eu_on, scope, consent_mode, m_eu,
                           m_consent, member_limit, tier_limit, org_limit, balance, m_spend,
                           m_res, org_spend, org_res)
  local eu_reason = eu_condition(plan, eu_on, scope, m_eu, member_limit)
  local remaining, limit_reason, fits = nil, '', '1'
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
  local consent_ok = consent_mode ~= 'required' or m_consent == '1' or accept == '1'
  local disabled = eu_reason
  if disabled == '' and not consent_ok then disabled = 'consent_required' end
  if disabled == '' then disabled = limit_reason end
  return disabled == '', disabled, eu_reason, remaining, fits
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

-- the rest of the whole answer (the check API, a status, every denial), after what every
-- answer carries: FULL_FIELDS after LEAN_FIELDS, each value after a "|"; with the three
-- fields only it reads
local function answer_rest(org_k, mem_k, p, rid, plan, kid, now_s, period, eu_on, remaining,
                           fits, consent_mode, m_consent, balance, m_res)
  local ar_pending, requests_on = unpack(redis.call('HMGET', org_k, 'ar_pending', 'requests_on'))
  local role = redis.call('HGET', mem_k, p .. 'role')
  return '|' .. rid .. '|' .. plan .. '|' .. kid .. '|' .. (role or DEFAULT_ROLE) .. '|'
    .. now_s .. '|' .. period .. '|' .. (eu_on == '1' and '1' or '0') .. '|'
    .. (remaining and fmt(remaining) or '') .. '|' .. fits .. '|' .. consent_mode .. '|'
    .. (m_consent == '1' and '1' or '0') .. '|' .. (plan == 'team' and fmt(balance) or '')
    .. '|' .. fmt(m_res) .. '|' .. (requests_on or DEFAULT_REQUESTS_ON) .. '|'
    .. (ar_pending or '')
end

-- the org's "rc" as it now stands ('' none held), written when it moved
local function keep_rc(org_k, rc, rc_moved, ow)
  if not rc_moved then return end
  if rc == '' then
    redis.call('HDEL', org_k, 'rc')
  elseif ow then
    put(ow, 'rc', rc)
  else
    redis.call('HSET', org_k, 'rc', rc)
  end
end

-- an allowed, reserving admission's writes, one HSET per hash, then its record (the answer
-- itself): a window opened now (ending at its reset, as answered), the clock, and an extra
-- usage reservation (held by the org and the member, and due at its expiry)
local function reserve(org_k, mem_k, due_k, op_k, p, mid, rid, now_s, advanced, s_opened,
                       w_opened, amount, org_res, m_res, rc, rc_moved, ttl_s, window_s, answer)
  local ow, mw = {}, {}
  if advanced then put(ow, 'clock', now_s) end
  if s_opened then put(mw, p .. 's_end', s_opened, p .. 's_used', '0') end
  if w_opened then put(mw, p .. 'w_end', w_opened, p .. 'w_used', '0') end
  local ttl = tonumber(ttl_s)
  if amount > 0 then
    put(ow, 'eu_res', fmt(org_res + amount))
    put(mw, p .. 'eu_res', fmt(m_res + amount))
    local exp = tonumber(now_s) + ttl
    redis.call('ZADD', due_k, exp, fmt(amount) .. '|' .. mid .. '|' .. rid)
    if rc == '' or num(rc) > exp then rc, rc_moved = fmt(exp), true end
  end
  keep_rc(org_k, rc, rc_moved, ow)
  hset_all(org_k, ow)
  hset_all(mem_k, mw)
  redis.call('SET', op_k, answer, 'EX', ttl + tonumber(window_s))
end

-- the admission: each step above, in order
local function admit(KEYS, ARGV)
  local org_k, mem_k, cred_k, due_k, op_k, rid = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
    ARGV[1]
  local policy_default, ttl_s, accept, reserve_s, pinned, window_s, force, lean, unbounded,
    period_hint, period_start, period_end, tiers = unpack(tail_of(ADMIT_TAILS, ARGV[6], ADMIT_TAIL))
  local reserving, whole = reserve_s == '1', lean ~= '1'

  if reserving then
    local prior = admit_replayed(op_k, ARGV[2] == 'm' and ARGV[3] or nil)
    if prior then return prior end
  end

  -- the org's fields, and the member's below: what every answer needs (the whole answer reads
  -- a few more: answer_rest)
  local plan, eu_on, scope, consent_mode, org_limit_s, balance_s, org_res_s, org_spend_p,
    org_spend_v, org_policy, upstream, org_enabled, clock, rc = unpack(redis.call('HMGET', org_k,
    'plan', 'eu_on', 'scope', 'consent', 'limit', 'balance', 'eu_res', 'spend_p', 'spend',
    'policy', 'upstream', 'enabled', 'clock', 'rc'))
  if not plan then return fail('unknown_org') end
  if org_enabled == '0' then return fail('org_disabled') end

  local mid, kid, kgen = identify(cred_k, ARGV[2], ARGV[3])
  if not mid then return kid end

  local now_s, advanced = clock_str(clock, pinned)
  local period, month_end_s = period_at(now_s, period_hint, period_start, period_end)
  local org_res, rc_moved
  org_res, rc, rc_moved = reclaim(org_k, mem_k, due_k, now_s, num(org_res_s), rc)

  local p = mid .. '|'
  local tier, m_enabled, s_end, s_used, w_end, w_used, m_spend_p, m_spend_v, m_res_s, m_limit_s,
    m_eu, m_consent, m_gen = unpack(redis.call('HMGET', mem_k, p .. 'tier', p .. 'enabled',
    p .. 's_end', p .. 's_used', p .. 'w_end', p .. 'w_used', p .. 'spend_p', p .. 'spend',
    p .. 'eu_res', p .. 'limit', p .. 'eu', p .. 'consent', p .. 'gen'))
  if not tier then return fail('unknown_member', mid) end
  -- a key issued before its member was removed is dead, even if the member is added again
  if kgen and kgen ~= (m_gen or '') then return fail('unknown_key') end
  if m_enabled == '0' then return fail('member_disabled', mid) end
  local sa_s, wa_s, s_used_s, s_reset_s, s_open, w_used_s, w_reset_s, w_open, seat_ok =
    windows(tiers, now_s, tier, s_end, s_used, w_end, w_used)
  if not sa_s then return fail('unknown_tier', tier) end

  local policy = org_policy or policy_default
  local m_spend_s = in_period(m_spend_p, m_spend_v, period)
  local org_spend_s = in_period(org_spend_p, org_spend_v, period)
  local m_res, balance = num(m_res_s), num(balance_s)
  local member_limit, tier_limit, org_limit = limits_of(org_k, plan, tier, m_limit_s, org_limit_s)
  consent_mode = consent_mode
    or (plan == 'team' and DEFAULT_CONSENT_TEAM or DEFAULT_CONSENT_ENTERPRISE)
  local eu_available, eu_disabled, eu_reason, remaining, fits = extra_usage(policy, ARGV[4],
    accept, plan, eu_on, scope, consent_mode, m_eu, m_consent, member_limit, tier_limit,
    org_limit, balance, num(m_spend_s), m_res, num(org_spend_s), org_res)
  local decision, mode, reason, amount = decide(policy, seat_ok, eu_available, eu_reason,
    eu_disabled, remaining, ARGV[4], ARGV[5], force)
  -- strict bounds every cost: a request whose server tools have no bound cannot run on it
  if mode == 'extra_usage' and policy == 'strict' and unbounded == '1' and force ~= '1' then
    return fail('unbounded_server_tool')
  end

  -- the answer, its values joined by "|" in admission.py's LEAN_FIELDS order, then (for the
  -- check API and every denial) the rest of FULL_FIELDS
  local rest = (decision ~= 'allow' or whole) and answer_rest(org_k, mem_k, p, rid, plan, kid,
    now_s, period, eu_on, remaining, fits, consent_mode, m_consent, balance, m_res) or ''
  local answer = '1|' .. decision .. '|' .. mode .. '|' .. reason .. '|' .. fmt(amount) .. '|'
    .. tier .. '|' .. mid .. '|' .. (upstream or '') .. '|' .. policy .. '|' .. s_used_s .. '|'
    .. sa_s .. '|' .. s_reset_s .. '|' .. w_used_s .. '|' .. wa_s .. '|' .. w_reset_s .. '|'
    .. (eu_available and '1' or '0') .. '|' .. eu_disabled .. '|' .. month_end_s .. '|'
    .. m_spend_s .. '|' .. org_spend_s .. '|' .. (member_limit and fmt(member_limit) or '')
    .. '|' .. (tier_limit and fmt(tier_limit) or '') .. '|' .. (org_limit and fmt(org_limit) or '')
    .. rest

  if decision ~= 'allow' or not reserving then
    keep_rc(org_k, rc, rc_moved, nil)
    return answer
  end
  reserve(org_k, mem_k, due_k, op_k, p, mid, rid, now_s, advanced, not s_open and s_reset_s,
    not w_open and w_reset_s, mode == 'extra_usage' and amount or 0, org_res, m_res, rc,
    rc_moved, ttl_s, window_s, answer)
  return answer
end
