-- Post an inbound item (from the web process) to a conversation's inbox, once per client id.
-- KEYS: inbox stream[, dedup key].  ARGV: payload, dedup ttl ms.
-- Returns {inbox id, 1 if this client id was already posted (nothing written) else 0}.
local inbox_key, seen_key = KEYS[1], KEYS[2]
if seen_key then
  local previous = redis.call('GET', seen_key)
  if previous then return {previous, 1} end
end
local id = redis.call('XADD', inbox_key, '*', 'e', ARGV[1])
if seen_key then redis.call('SET', seen_key, id, 'PX', ARGV[2]) end
return {id, 0}
