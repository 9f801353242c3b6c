-- Record a new pending approval, once. KEYS: approval hash. ARGV: field/value pairs.
-- Returns {1, fields} when created, {0, fields of the existing record} when the id already exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return {1, redis.call('HGETALL', KEYS[1])}
