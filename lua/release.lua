-- release: give back a reservation without charging (upstream failed before any byte,
-- or a first-party backend decided not to serve the message).
--
-- KEYS[1] org      hash: reserved total, clock
-- KEYS[2] members  hash: "<member>|eu_res"
-- KEYS[3] ops      hash: operation id -> JSON record
-- KEYS[4] due      zset: operation id by when its record expires
-- ARGV[1] request_id   the reservation made by admit.lua
-- ARGV[2] pinned_now   epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[3] retention_s  seconds the finished record is kept
-- Reply: JSON {ok=1, released=<nano-USD>, replay?} or {ok=0, err="unknown_reservation"|"settled"}.
-- Idempotent: releasing twice releases once.

local org_k, mem_k, ops_k, due_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local raw = redis.call('HGET', ops_k, rid)
if not raw then return fail('unknown_reservation') end
local rec = cjson.decode(raw)
if rec.s == 'released' then return cjson.encode({ ok = 1, released = '0', replay = '1' }) end
if rec.s == 'settled' then return fail('settled') end
if rec.s ~= 'r' and rec.s ~= 'x' then return fail('unknown_reservation') end

local now = clock_now(org_k, ARGV[2])
local held = (rec.s == 'r') and num(rec.a) or 0
if rec.mode == 'extra_usage' and held > 0 then
  redis.call('HINCRBY', mem_k, rec.m .. '|eu_res', fmt(-held))
  redis.call('HINCRBY', org_k, 'eu_res', fmt(-held))
end
rec.s = 'released'
rec.reply = nil  -- see settle.lua: only admission replays need it
redis.call('HSET', ops_k, rid, cjson.encode(rec))
redis.call('HDEL', ops_k, 'a:' .. rid)
redis.call('ZADD', due_k, now + tonumber(ARGV[3]), rid)
return cjson.encode({ ok = 1, released = fmt(held) })
