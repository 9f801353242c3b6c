-- Move the invalidation cursor forward only (two workers may apply the same catalog changes).
-- KEYS: cursor. ARGV: seq. Returns the cursor after the call.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
if seq > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return seq
end
return current
