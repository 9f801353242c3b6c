-- The semantic answer cache's scripts (store/answer_cache.py). Every key of a tenant shares its hash tag
-- `acache:{tenant}:`, passed as ARGV[1]; the keys a script derives from it (an entry's hash, a chunk's set
-- of entries) are therefore in the same Redis Cluster slot as the declared ones.
--   <p>e:<id>      hash: rec (the record), chunks (its source chunk ids, space-separated)
--   <p>vecs        hash: entry id -> question vector (float32 bytes)
--   <p>lru         sorted set: entry id -> last use (ms)
--   <p>c:<chunk>   set: the entries built from that chunk (the reverse index)
--   <p>gen         counter: bumped by every change (a reader's vector matrix is current while it matches)

local function remove_entry(p, id)
  local chunks = redis.call('HGET', p .. 'e:' .. id, 'chunks')
  if chunks then
    for chunk in string.gmatch(chunks, '%S+') do
      redis.call('SREM', p .. 'c:' .. chunk, id)
    end
  end
  redis.call('DEL', p .. 'e:' .. id)
  redis.call('HDEL', p .. 'vecs', id)
  return redis.call('ZREM', p .. 'lru', id)
end
