-- Move a decided or expired approval from its room's queue into the audit indexes and announce it,
-- once; safe to repeat (a reader repairs what a crash between decide and settle left behind).
-- KEYS: room pending zset, tenant audit zset, tenant+tool audit zset, room events stream.
-- ARGV: approval id, decided_ms, room event payload, events maxlen. Returns 1 when newly settled.
local pending_key, audit_key, tool_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, decided_ms, payload, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('ZREM', pending_key, id)
redis.call('ZADD', tool_key, 'NX', decided_ms, id)
if redis.call('ZADD', audit_key, 'NX', decided_ms, id) == 0 then return 0 end
redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'e', payload)
return 1
