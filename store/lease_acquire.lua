-- Take a conversation's lease with a new fencing epoch, unless another owner holds it unexpired.
-- KEYS: lease hash, epoch counter.  ARGV: owner, ttl_ms.
-- Returns {epoch, expires_ms}; error LEASE_HELD "<expires_ms> <owner>" when held.
local epoch, expires = take_lease(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), now_ms())
if epoch == nil then return expires end
return {epoch, expires}
