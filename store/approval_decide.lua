-- Compare-and-set on an approval: only a pending, unexpired approval can be decided, exactly once.
-- KEYS: approval hash.
-- ARGV: mode ('decide' or 'expire'), decision, reviewer, reason, now_ms, tenant ('' = unchecked).
-- Returns {outcome, fields after}: 'decided' (this call decided it), 'expired' (this call found it past
-- its expiry and expired it), 'already' (it was not pending), 'not_due' (expire called too early).
local key = KEYS[1]
local mode, decision, reviewer, reason, now, tenant =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local record = redis.call('HMGET', key, 'state', 'tenant', 'expires_ms')
-- Another tenant's approval is reported exactly like a missing one: its existence is not revealed.
if record[1] == false or (tenant ~= '' and record[2] ~= tenant) then
  return redis.error_reply('NOT_FOUND no such approval')
end
local outcome
if record[1] ~= 'pending' then
  outcome = 'already'
elseif now >= tonumber(record[3]) then
  redis.call('HSET', key, 'state', 'expired', 'decided_ms', record[3])
  outcome = 'expired'
elseif mode == 'expire' then
  outcome = 'not_due'
else
  redis.call('HSET', key, 'state', decision, 'reviewer', reviewer, 'decision_reason', reason, 'decided_ms', now)
  outcome = 'decided'
end
return {outcome, redis.call('HGETALL', key)}
