-- release: give back a reservation without charging (upstream failed before any byte,
-- or a first-party backend decided not to serve the message).
--
-- KEYS[1] org      hash: reserved total
-- KEYS[2] members  hash: "<member>|eu_res"
-- KEYS[3] due      zset: the live extra-usage reservations ("<amount>|<member>|<id>")
-- KEYS[4] op       string: the request's record (model.py, Op)
-- ARGV[1] request_id   the reservation made by admit.lua
-- ARGV[2] window_s     seconds the finished record is kept, for replays
-- Reply: JSON {ok=1, released=<nano-USD>, replay?} or {ok=0, err="unknown_reservation"|"settled"}.
-- Idempotent: releasing twice releases once.

local function release(KEYS, ARGV)
  local org_k, mem_k, due_k, op_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local rid = ARGV[1]
  local raw = redis.call('GET', op_k)
  if not raw then return fail('unknown_reservation') end
  local a, _, _, mid = reserved(raw)
  if not a then
    if raw == 'R' then return '{"ok":1,"released":"0","replay":"1"}' end
    if settled(raw) then return fail('settled') end
    return fail('unknown_reservation')
  end

  -- held while its entry is in "due" (reclaimed past its expiry: it holds nothing)
  local held = '0'
  if a ~= '0' and redis.call('ZREM', due_k, a .. '|' .. mid .. '|' .. rid) == 1 then
    held = a
    redis.call('HINCRBY', mem_k, mid .. '|eu_res', '-' .. a)
    redis.call('HINCRBY', org_k, 'eu_res', '-' .. a)
  end
  redis.call('SET', op_k, 'R', 'EX', ARGV[2])
  return '{"ok":1,"released":"' .. held .. '"}'
end
