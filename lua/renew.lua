-- renew: a request still running keeps its reservation (a lease renewed while it runs), so
-- that no admission reclaims it and gives its room to others.
--
-- KEYS[1] org      hash: clock
-- KEYS[2] ops      hash: operation id -> JSON record
-- KEYS[3] due      zset: operation id by when its record expires
-- ARGV[1] request_id         the reservation made by admit.lua
-- ARGV[2] reservation_ttl_s  seconds from now the reservation holds
-- ARGV[3] pinned_now         epoch seconds (tests only; 0 = Redis TIME)
-- Reply: JSON {ok=1, exp} (exp "" when the record holds nothing to renew: settled, released
-- or reclaimed already) or {ok=0, err="unknown_reservation"}.
-- Idempotent: renewing twice sets the same later expiry.

local org_k, ops_k, due_k = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[1]
local raw = redis.call('HGET', ops_k, rid)
if not raw then return fail('unknown_reservation') end
local rec = cjson.decode(raw)
if rec.s ~= 'r' then return '{"ok":1,"exp":""}' end
local now = clock_now(org_k, ARGV[3])
local exp_s = fmt(now + tonumber(ARGV[2]))
rec.exp = exp_s
redis.call('HSET', ops_k, rid, cjson.encode(rec))
redis.call('ZADD', due_k, exp_s, rid)
return '{"ok":1,"exp":"' .. exp_s .. '"}'
