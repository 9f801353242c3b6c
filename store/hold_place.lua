-- Place a budget hold with its place in line: the sequence and the hold move together.
-- KEYS: the tenant's holds (sorted set), the tenant's hold sequence. ARGV: expiry ms, ttl ms, the hold's
-- text (`<hold id>\t<user>\t<tokens>\t<cost>`). Returns the member: `<sequence, 12 digits>\t<text>`.
local seq = redis.call('INCR', KEYS[2])
local member = string.format('%012d', seq) .. '\t' .. ARGV[3]
redis.call('ZADD', KEYS[1], ARGV[1], member)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return member
