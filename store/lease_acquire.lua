-- Take a conversation's lease with a new fencing epoch, unless another owner holds it unexpired.
-- KEYS: lease hash, epoch counter.  ARGV: owner, ttl_ms.
-- Returns {epoch, expires_ms}; error LEASE_HELD "<expires_ms> <owner>" when held.
local lease_key, epoch_key = KEYS[1], KEYS[2]
local owner, ttl_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local held = redis.call('HMGET', lease_key, 'owner', 'expires')
if held[1] and held[1] ~= owner and tonumber(held[2]) > now then
  return redis.error_reply('LEASE_HELD ' .. held[2] .. ' ' .. held[1])
end
local epoch = redis.call('INCR', epoch_key)
local expires = now + ttl_ms
redis.call('HSET', lease_key, 'owner', owner, 'epoch', epoch, 'expires', expires)
return {epoch, expires}
