-- renew: a request still running keeps its record and its reservation (a lease renewed
-- while it runs), so that no admission reclaims it and gives its room to others.
--
-- KEYS[1] org      hash: clock
-- KEYS[2] due      zset: the live extra-usage reservations ("<amount>|<member>|<id>")
-- KEYS[3] op       string: the request's record (model.py, Op)
-- ARGV[1] request_id         the reservation made by admit.lua
-- ARGV[2] reservation_ttl_s  seconds from now the reservation holds
-- ARGV[3] pinned_now         epoch seconds (tests only; 0 = Redis TIME)
-- ARGV[4] window_s           seconds the record is kept after the reservation's expiry
-- Reply: JSON {ok=1, exp}: the lease's new end, "" when the request is over (settled or
-- released); {ok=0, err="unknown_reservation"}. A reservation reclaimed already stays so
-- (its record is kept, so that its settlement still finds it).
-- Idempotent: renewing twice sets the same later expiry.

local function renew(KEYS, ARGV)
  local org_k, due_k, op_k = KEYS[1], KEYS[2], KEYS[3]
  local rid = ARGV[1]
  local raw = redis.call('GET', op_k)
  if not raw then return fail('unknown_reservation') end
  local a, _, _, mid = reserved(raw)
  if not a then return '{"ok":1,"exp":""}' end
  local now = clock_now(org_k, ARGV[3])
  local ttl = tonumber(ARGV[2])
  redis.call('EXPIRE', op_k, ttl + tonumber(ARGV[4]))
  local exp_s = fmt(now + ttl)
  local entry = a .. '|' .. mid .. '|' .. rid
  if a ~= '0' and redis.call('ZSCORE', due_k, entry) then redis.call('ZADD', due_k, exp_s, entry) end
  return '{"ok":1,"exp":"' .. exp_s .. '"}'
end
