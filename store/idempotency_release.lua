-- Drop a claim whose side effect failed, so a retry may claim again; a recorded result stays.
-- KEYS: idempotency key.  ARGV: the claim marker.  Returns 1 when a claim was dropped.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
