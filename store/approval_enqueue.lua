-- Put a pending approval on its room's queue and announce it, once (all keys in the tenant's slot).
-- KEYS: room pending zset, tenant audit zset, room events stream.
-- ARGV: approval id, created_ms, room event payload, events maxlen. Returns 1 when newly queued.
local pending_key, audit_key, events_key = KEYS[1], KEYS[2], KEYS[3]
local id, created_ms, payload, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- Decided before it was ever queued (a crash between create and enqueue): nothing to queue.
if redis.call('ZSCORE', audit_key, id) then return 0 end
if redis.call('ZADD', pending_key, 'NX', created_ms, id) == 0 then return 0 end
redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'e', payload)
return 1
