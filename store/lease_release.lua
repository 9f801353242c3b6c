-- Give the lease up at once, only if `epoch` still holds it. KEYS: lease hash. ARGV: epoch.
-- Returns 1 when released, 0 when this epoch no longer held it. Owner and epoch stay for diagnostics.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch == false or tonumber(epoch) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'expires', 0)
return 1
