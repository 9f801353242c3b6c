-- Store one entry, evicting the least recently used beyond the tenant's bound.
-- KEYS: vecs, lru, gen. ARGV: prefix, id, record, vector, chunk ids (space-separated), now ms, ttl ms,
-- max entries. Returns the number of entries evicted.
local p, id, now, ttl, max = ARGV[1], ARGV[2], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local evicted = 0
remove_entry(p, id)
local excess = redis.call('ZCARD', KEYS[2]) - max + 1
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do
    evicted = evicted + remove_entry(p, old)
  end
end
local entry = p .. 'e:' .. id
redis.call('HSET', entry, 'rec', ARGV[3], 'chunks', ARGV[5])
redis.call('PEXPIRE', entry, ttl)
redis.call('HSET', KEYS[1], id, ARGV[4])
redis.call('ZADD', KEYS[2], now, id)
for chunk in string.gmatch(ARGV[5], '%S+') do
  local set = p .. 'c:' .. chunk
  redis.call('SADD', set, id)
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
end
redis.call('INCR', KEYS[3])
return evicted
