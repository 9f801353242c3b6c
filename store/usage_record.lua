-- Count log entries' usage exactly once: the counters and the conversation's usage cursor move together.
-- KEYS: the tenant's day, its users' day, the tenant's month, its users' month, the conversation's cursor
--       (all under the tenant's hash tag: one Redis Cluster slot)
-- ARGV: user, retention s, cursor ttl s, then per entry (oldest first, all of that day): entry id, the
--       number n of its triples, then n (field, amount, scope) triples; scope `m` (tokens and cost: the
--       tenant's and the user's day and month), `d` (turns: their day only) or `q` (a quality signal: the
--       tenant's day only)
-- An entry is counted only when it is newer than the cursor (then the cursor moves to it); the counted
-- entries' amounts are summed per field, so each counter moves once per call.
-- Returns how many entries were counted (0: all of them, or later ones, were counted already).
local cursor = redis.call('GET', KEYS[5])
local user = ARGV[1]
local sums, scopes, order = {}, {}, {}
local counted, i = 0, 4
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if not cursor or compare_ids(id, cursor) > 0 then
    for t = i, i + 3 * (n - 1), 3 do
      local name = ARGV[t]
      if sums[name] == nil then
        sums[name], scopes[name] = 0, ARGV[t + 2]
        order[#order + 1] = name
      end
      sums[name] = sums[name] + tonumber(ARGV[t + 1])
    end
    cursor = id
    counted = counted + 1
  end
  i = i + 3 * n
end
if counted == 0 then return 0 end
for _, name in ipairs(order) do
  local add, amount = 'HINCRBY', string.format('%d', sums[name])
  if name == 'cost_usd' then add, amount = 'HINCRBYFLOAT', string.format('%.17g', sums[name]) end
  redis.call(add, KEYS[1], name, amount)
  if scopes[name] ~= 'q' then redis.call(add, KEYS[2], user .. ':' .. name, amount) end
  if scopes[name] == 'm' then
    redis.call(add, KEYS[3], name, amount)
    redis.call(add, KEYS[4], user .. ':' .. name, amount)
  end
end
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
redis.call('SET', KEYS[5], cursor, 'EX', ARGV[3])
return counted
