-- Save a fenced snapshot of a conversation's folded state as of log entry `last_id`.
-- KEYS: snapshot hash, lease, log.  ARGV: epoch, last_id, state bytes.
-- Refused when the epoch is stale, when last_id is not an entry of the log, or when it would move the
-- snapshot backwards.
local snap_key, lease_key, log_key = KEYS[1], KEYS[2], KEYS[3]
local epoch, last_id = ARGV[1], ARGV[2]
local now = now_ms()
local err = fence_error(lease_key, epoch, now)
if err then return err end
if #redis.call('XRANGE', log_key, last_id, last_id) == 0 then
  return redis.error_reply('BAD_INPUT ' .. last_id .. ' is not an entry of the log')
end
local previous = redis.call('HGET', snap_key, 'last_id')
if previous and compare_ids(last_id, previous) < 0 then
  return redis.error_reply('BAD_INPUT the snapshot is already at ' .. previous .. ', after ' .. last_id)
end
redis.call('HSET', snap_key, 'state', ARGV[3], 'last_id', last_id, 'epoch', epoch, 'at_ms', now)
return now
