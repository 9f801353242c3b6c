-- An activation's opening read in one call: the lease taken (as lease_acquire.lua), then what the
-- activation folds and takes first.
-- KEYS: lease, epoch counter, log, inbox, snapshot hash, inbox cursor.
-- ARGV: owner, ttl_ms, tail count, inbox count.
-- Returns {} when the conversation has neither a log entry nor an inbox entry (nothing is written); else
-- {epoch, expires_ms, the snapshot hash as a flat list ({}: none), up to `tail count` log entries after the
-- snapshot's last id (from the start without one), the inbox cursor ('': none), up to `inbox count` inbox
-- entries after it}. Error LEASE_HELD "<expires_ms> <owner>" when another owner holds the lease.
local lease_key, epoch_key, log_key, inbox_key, snap_key, cursor_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('XLEN', log_key) == 0 and redis.call('XLEN', inbox_key) == 0 then return {} end
local epoch, expires = take_lease(lease_key, epoch_key, ARGV[1], tonumber(ARGV[2]), now_ms())
if epoch == nil then return expires end
local snap = redis.call('HGETALL', snap_key)
local after = '-'
for i = 1, #snap, 2 do
  if snap[i] == 'last_id' then after = '(' .. snap[i + 1] end
end
local tail = redis.call('XRANGE', log_key, after, '+', 'COUNT', ARGV[3])
local cursor = redis.call('GET', cursor_key)
local inbox = redis.call('XRANGE', inbox_key, cursor and ('(' .. cursor) or '-', '+', 'COUNT', ARGV[4])
return {epoch, expires, snap, tail, cursor or '', inbox}
