-- Token bucket, timed by the Redis server clock so clients' clocks never matter.
-- KEYS: bucket hash.  ARGV: rate per second, burst, cost.
-- Returns {allowed (1/0), retry_after_ms, whole tokens left}.
local key = KEYS[1]
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local bucket = redis.call('HMGET', key, 'tokens', 'at_us')
local tokens = tonumber(bucket[1]) or burst
local at_us = tonumber(bucket[2]) or now_us
tokens = math.min(burst, tokens + math.max(0, now_us - at_us) * rate / 1000000)
local allowed, retry_after_ms = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_after_ms = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at_us', string.format('%.0f', now_us))
-- A bucket left alone until it is full again is the same as no bucket.
redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {allowed, retry_after_ms, math.floor(tokens)}
