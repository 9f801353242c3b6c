-- Count one log entry's usage exactly once: the counters and the conversation's usage cursor move together.
-- KEYS: the tenant's day, its users' day, the tenant's month, its users' month, the conversation's cursor
--       (all under the tenant's hash tag: one Redis Cluster slot)
-- ARGV: entry id, user, retention s, cursor ttl s, then (field, amount, scope) triples; scope `s` (spend:
--       the tenant's and the user's day and month) or `q` (a quality signal: the tenant's day only)
-- Returns 1 when counted, 0 when this entry or a later one of the conversation was counted already.
local last = redis.call('GET', KEYS[5])
if last and compare_ids(ARGV[1], last) <= 0 then return 0 end
local user = ARGV[2]
for i = 5, #ARGV, 3 do
  local name, amount, scope = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local add = name == 'cost_usd' and 'HINCRBYFLOAT' or 'HINCRBY'
  redis.call(add, KEYS[1], name, amount)
  if scope == 's' then
    redis.call(add, KEYS[2], user .. ':' .. name, amount)
    redis.call(add, KEYS[3], name, amount)
    redis.call(add, KEYS[4], user .. ':' .. name, amount)
  end
end
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[3]) end
redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[4])
return 1
