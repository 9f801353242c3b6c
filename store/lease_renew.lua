-- Extend the lease of the writer holding `epoch`; an expired or taken lease cannot be renewed.
-- KEYS: lease hash.  ARGV: epoch, ttl_ms.  Returns the new expiry (server ms).
local now = now_ms()
local err = fence_error(KEYS[1], ARGV[1], now)
if err then return err end
local expires = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires', expires)
return expires
