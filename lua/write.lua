-- write: change fields of one org hash under guards, and record the change in the audit log.
--
-- KEYS[1] target  hash: the org, members or requests hash
-- KEYS[2] audit   stream: who changed what, before, after, when
-- ARGV[1] actor       who
-- ARGV[2] action      what
-- ARGV[3] pinned_now  epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[4] guards      one a line: "=field=value" the field must equal value; "+field" the
--                     field must exist; "-field" it must not ("not_found"/"exists"/"conflict")
-- ARGV[5..] field, value pairs; the value "\0" deletes the field
-- Reply: JSON {ok=1, before={...}, after={...}} or {ok=0, err, detail=<field>}.
-- Idempotent: writing the same values again changes nothing and writes no audit entry.

local function write(KEYS, ARGV)
  local key, audit_k = KEYS[1], KEYS[2]
  for line in string.gmatch(ARGV[4], '[^\n]+') do
    local kind, rest = string.sub(line, 1, 1), string.sub(line, 2)
    if kind == '+' then
      if redis.call('HEXISTS', key, rest) == 0 then return fail('not_found', rest) end
    elseif kind == '-' then
      if redis.call('HEXISTS', key, rest) == 1 then return fail('exists', rest) end
    elseif kind == '=' then
      local f, v = string.match(rest, '^([^=]*)=(.*)$')
      local cur = redis.call('HGET', key, f)
      if cur ~= v then return fail('conflict', f) end
    end
  end

  local before, after = {}, {}
  local sets, dels = {}, {}
  for i = 5, #ARGV, 2 do
    local f, v = ARGV[i], ARGV[i + 1]
    local cur = redis.call('HGET', key, f)
    before[f] = cur or cjson.null
    if v == '\0' then
      if cur then dels[#dels + 1] = f end
      after[f] = cjson.null
    else
      if cur ~= v then
        sets[#sets + 1] = f
        sets[#sets + 1] = v
      end
      after[f] = v
    end
  end
  -- a write that changes nothing leaves no audit entry (a member toggling a setting to what
  -- it already is cannot bury the owners' changes)
  if #sets == 0 and #dels == 0 then
    return cjson.encode({ ok = 1, before = before, after = after })
  end
  if #sets > 0 then redis.call('HSET', key, unpack(sets)) end
  if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
  record_change(audit_k, ARGV[1], ARGV[2], ARGV[3], before, after)
  return cjson.encode({ ok = 1, before = before, after = after })
end
