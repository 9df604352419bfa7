-- whois: the member behind a credential (read-only).
--
-- KEYS[1] org      hash: plan, upstream, enabled
-- KEYS[2] members  hash: "<member>|tier", role, enabled
-- KEYS[3] creds    hash: "<kind>:<sha256>" -> "<member>|<id>"
-- ARGV[1] kind         "k" (proxy key) | "t" (admin token)
-- ARGV[2] secret_hash  sha256 of the secret
-- Reply: JSON {ok=1, member, id, role, tier, enabled, plan, upstream} or {ok=0, err}.

local function whois(KEYS, ARGV)
  local org_k, mem_k, cred_k = KEYS[1], KEYS[2], KEYS[3]
  local o = redis.call('HMGET', org_k, 'plan', 'upstream', 'enabled')
  local plan = o[1]
  if not plan then return fail('unknown_org') end
  local v = redis.call('HGET', cred_k, ARGV[1] .. ':' .. ARGV[2])
  if not v then return fail('unknown_credential') end
  local mid, id, gen = split3(v)
  local p = mid .. '|'
  local m = redis.call('HMGET', mem_k, p .. 'tier', p .. 'role', p .. 'enabled', p .. 'gen')
  if not m[1] then return fail('unknown_member', mid) end
  -- issued before its member was removed: dead, even if the member is added again
  if gen ~= (m[4] or '') then return fail('unknown_credential') end
  return cjson.encode({ ok = 1, member = mid, id = id, tier = m[1],
    role = m[2] or DEFAULT_ROLE,
    enabled = (m[3] == '0' or o[3] == '0') and '0' or '1', plan = plan, upstream = o[2] or '' })
end
