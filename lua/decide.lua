-- decide: an extra usage request's decision and the limits it raises, in one atomic step.
--
-- KEYS[1] org       hash: the org's settings (its monthly and seat-tier limits)
-- KEYS[2] members   hash: "<member>|<field>" (the member's own limit)
-- KEYS[3] requests  hash: the org's extra usage requests, by id (JSON records)
-- KEYS[4] audit     stream: who changed what, before, after, when
-- ARGV[1] actor       who decides
-- ARGV[2] action      what, as the audit log names it
-- ARGV[3] pinned_now  epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[4] request_id  the request decided
-- ARGV[5] expected    the request's record as the decider read it (pending)
-- ARGV[6] record      the request's record once decided
-- ARGV[7] member      the member whose own limit is raised ("" for none)
-- ARGV[8] org_pairs   how many field, value pairs of the org come first in ARGV[9..]
-- ARGV[9..] the org's field, value pairs, then the member's ("<member>|<field>", value)
-- Reply: JSON {ok=1, before={...}, after={...}} or {ok=0, err="conflict"|"unknown_member", detail}.
-- Exactly one of two decisions of the same request has any effect: the record must still be
-- the one read ("conflict" otherwise), and the member must still be there when their limit is
-- raised ("unknown_member"); every check before the first write. Idempotent: a decision replayed
-- finds the record decided and changes nothing.

local function decide(KEYS, ARGV)
  local org_k, mem_k, req_k, audit_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local rid, expected, record, member = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  if redis.call('HGET', req_k, rid) ~= expected then return fail('conflict', rid) end
  if member ~= '' and redis.call('HEXISTS', mem_k, member .. '|tier') == 0 then
    return fail('unknown_member', member)
  end
  local before, after = {}, {}
  local org_end = 8 + 2 * tonumber(ARGV[8])
  local org_w, mem_w = {}, {}
  for i = 9, #ARGV, 2 do
    local key, w = mem_k, mem_w
    if i <= org_end then key, w = org_k, org_w end
    before[ARGV[i]] = redis.call('HGET', key, ARGV[i]) or cjson.null
    after[ARGV[i]] = ARGV[i + 1]
    put(w, ARGV[i], ARGV[i + 1])
  end
  before[rid], after[rid] = expected, record
  hset_all(org_k, org_w)
  hset_all(mem_k, mem_w)
  redis.call('HSET', req_k, rid, record)
  record_change(audit_k, ARGV[1], ARGV[2], ARGV[3], before, after)
  return cjson.encode({ ok = 1, before = before, after = after })
end
