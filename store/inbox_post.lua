-- Post an inbound item (from the web process) to a conversation's inbox, once per client id.
-- KEYS: inbox stream, lease hash[, dedup key].  ARGV: payload, dedup ttl ms.
-- Returns {inbox id, 1 if this client id was already posted (nothing posted) else 0, 1 if an activation
-- holds the conversation's lease unexpired now else 0}. A held lease's holder reports the entry when it
-- ends (lease_close.lua: an inbox entry newer than all it looked at) and wakes the actor itself, so the
-- poster need not send a wake-up of its own (the script runs atomically with that close).
-- A repeat renews the dedup key's expiry: a write, so a WAIT after a retry (server/dispatch.py) waits
-- until the replicas have everything up to it, the first post included.
local inbox_key, lease_key, seen_key = KEYS[1], KEYS[2], KEYS[3]
local function held()
  local expires = redis.call('HGET', lease_key, 'expires')
  return (expires and tonumber(expires) > now_ms()) and 1 or 0
end
if seen_key then
  local previous = redis.call('GET', seen_key)
  if previous then
    redis.call('PEXPIRE', seen_key, ARGV[2])
    return {previous, 1, held()}
  end
end
local id = redis.call('XADD', inbox_key, '*', 'e', ARGV[1])
if seen_key then redis.call('SET', seen_key, id, 'PX', ARGV[2]) end
return {id, 0, held()}
