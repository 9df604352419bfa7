-- credential: issue or revoke a proxy key ("k") or an admin token ("t") of a member.
--
-- KEYS[1] creds    hash: credentials by secret hash and by id
-- KEYS[2] members  hash: "<member>|tier" (the member must exist)
-- KEYS[3] audit    stream
-- ARGV[1] op           "add" | "revoke"
-- ARGV[2] kind         "k" | "t"
-- ARGV[3] secret_hash  sha256 of the secret (add)
-- ARGV[4] member       the member id
-- ARGV[5] cred_id      the credential id
-- ARGV[6] actor        who, for the audit log
-- ARGV[7] pinned_now   epoch seconds (0 = Redis TIME)
-- Layout: "<kind>:<hash>" -> "<member>|<id>|<generation>" (lookup by secret; the member's
-- generation when it was issued), "<kind>id:<id>" -> hash.
-- Reply: JSON {ok=1} or {ok=0, err="unknown_member"|"unknown_credential"|"exists"}.
-- Idempotent: adding the same id with the same hash again, or revoking twice, changes nothing
-- more.

local function credential(KEYS, ARGV)
  local cred_k, mem_k, audit_k = KEYS[1], KEYS[2], KEYS[3]
  local op, kind, hash, mid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  local now = tonumber(ARGV[7])
  if now <= 0 then now = tonumber(redis.call('TIME')[1]) end

  if op == 'add' then
    if redis.call('HEXISTS', mem_k, mid .. '|tier') == 0 then return fail('unknown_member', mid) end
    local existing = redis.call('HGET', cred_k, kind .. 'id:' .. id)
    if existing then
      if existing == hash then return cjson.encode({ ok = 1, replay = '1' }) end
      return fail('exists', id)
    end
    -- the member's generation goes with it: removing the member moves it on
    local gen = redis.call('HGET', mem_k, mid .. '|gen') or ''
    redis.call('HSET', cred_k, kind .. ':' .. hash, mid .. '|' .. id .. '|' .. gen,
      kind .. 'id:' .. id, hash)
    redis.call('XADD', audit_k, '*', 'ts', fmt(now), 'actor', ARGV[6],
      'action', kind == 'k' and 'key.issue' or 'admin_token.issue',
      'before', '{}', 'after', cjson.encode({ member = mid, id = id }))
    return cjson.encode({ ok = 1 })
  end

  local h = redis.call('HGET', cred_k, kind .. 'id:' .. id)
  if not h then return fail('unknown_credential', id) end
  local owner = redis.call('HGET', cred_k, kind .. ':' .. h)
  if owner then
    local omid = split3(owner)
    if mid ~= '' and omid ~= mid then return fail('unknown_credential', id) end
  end
  redis.call('HDEL', cred_k, kind .. ':' .. h, kind .. 'id:' .. id)
  redis.call('XADD', audit_k, '*', 'ts', fmt(now), 'actor', ARGV[6],
    'action', kind == 'k' and 'key.revoke' or 'admin_token.revoke',
    'before', cjson.encode({ member = mid, id = id }), 'after', '{}')
  return cjson.encode({ ok = 1 })
end
