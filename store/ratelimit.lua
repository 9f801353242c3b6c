-- Token buckets, timed by the Redis server clock so clients' clocks never matter. Several buckets (all in
-- one slot) are one check: the cost is taken from every bucket, or from none when one of them is short.
-- KEYS: bucket hashes.  ARGV: cost, then rate per second and burst for each key.
-- Returns {allowed (1/0), retry_after_ms, whole tokens left (the fewest), 1-based index of a short bucket}.
local cost = tonumber(ARGV[1])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local levels = {}
local allowed, retry_after_ms, short = 1, 0, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local bucket = redis.call('HMGET', key, 'tokens', 'at_us')
  local tokens = tonumber(bucket[1]) or burst
  local at_us = tonumber(bucket[2]) or now_us
  tokens = math.min(burst, tokens + math.max(0, now_us - at_us) * rate / 1000000)
  levels[i] = tokens
  if tokens < cost then
    local wait_ms = math.ceil((cost - tokens) * 1000 / rate)
    if allowed == 1 or wait_ms > retry_after_ms then
      retry_after_ms, short = wait_ms, i
    end
    allowed = 0
  end
end
local remaining = nil
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tokens = levels[i]
  if allowed == 1 then
    tokens = tokens - cost
  end
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at_us', string.format('%.0f', now_us))
  -- A bucket left alone until it is full again is the same as no bucket.
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  if remaining == nil or tokens < remaining then
    remaining = tokens
  end
end
return {allowed, retry_after_ms, math.floor(remaining), short}
