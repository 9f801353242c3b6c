-- Remove entries: by id (ARGV[2] = 'ids') or every entry built from a chunk (ARGV[2] = 'chunks').
-- KEYS: gen. ARGV: prefix, kind, ids or chunk ids... Returns the number of entries removed.
local p, removed = ARGV[1], 0
for i = 3, #ARGV do
  if ARGV[2] == 'chunks' then
    local set = p .. 'c:' .. ARGV[i]
    for _, id in ipairs(redis.call('SMEMBERS', set)) do
      removed = removed + remove_entry(p, id)
    end
    redis.call('DEL', set)
  else
    removed = removed + remove_entry(p, ARGV[i])
  end
end
if removed > 0 then redis.call('INCR', KEYS[1]) end
return removed
