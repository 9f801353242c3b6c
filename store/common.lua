-- Shared prelude of the conversation scripts (prepended by store/scripts.py).
-- Times come from the Redis server clock (TIME), so workers' clocks never decide who holds a lease.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function format_id(ms, seq)
  return string.format('%.0f-%.0f', ms, seq)
end

-- -1, 0 or 1 as stream id a sorts before, equal to, or after b.
local function compare_ids(a, b)
  local a_ms, a_seq = parse_id(a)
  local b_ms, b_seq = parse_id(b)
  if a_ms ~= b_ms then return a_ms < b_ms and -1 or 1 end
  if a_seq ~= b_seq then return a_seq < b_seq and -1 or 1 end
  return 0
end

-- The id of a stream's newest entry, '0-0' when it has none. We never XDEL, so this is its top.
local function top_id(key)
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #newest == 0 then return '0-0' end
  return newest[1][1]
end

-- nil when the writer holding `epoch` still holds an unexpired lease, else the error reply to return.
local function fence_error(lease_key, epoch, now)
  local lease = redis.call('HMGET', lease_key, 'epoch', 'expires')
  if lease[1] == false or tonumber(lease[1]) ~= tonumber(epoch) then
    return redis.error_reply('STALE_EPOCH writer has epoch ' .. epoch .. ', the lease is at ' .. tostring(lease[1]))
  end
  if tonumber(lease[2]) <= now then
    return redis.error_reply('LEASE_EXPIRED the lease of epoch ' .. epoch .. ' expired at ' .. lease[2])
  end
  return nil
end

-- Save a fenced snapshot as of log entry `last_id`: nil when saved, else the error reply to return.
-- Refused when the epoch is stale, when last_id is not an entry of the log, or when it would move the
-- snapshot backwards.
local function save_snapshot(snap_key, lease_key, log_key, epoch, last_id, state, now)
  local err = fence_error(lease_key, epoch, now)
  if err then return err end
  if #redis.call('XRANGE', log_key, last_id, last_id) == 0 then
    return redis.error_reply('BAD_INPUT ' .. last_id .. ' is not an entry of the log')
  end
  local previous = redis.call('HGET', snap_key, 'last_id')
  if previous and compare_ids(last_id, previous) < 0 then
    return redis.error_reply('BAD_INPUT the snapshot is already at ' .. previous .. ', after ' .. last_id)
  end
  redis.call('HSET', snap_key, 'state', state, 'last_id', last_id, 'epoch', epoch, 'at_ms', now)
  return nil
end

-- Give the lease up at once, only if `epoch` still holds it: 1 when released, 0 when it no longer held it.
-- Owner and epoch stay for diagnostics.
local function release_lease(lease_key, epoch)
  local held = redis.call('HGET', lease_key, 'epoch')
  if held == false or tonumber(held) ~= tonumber(epoch) then return 0 end
  redis.call('HSET', lease_key, 'expires', 0)
  return 1
end

-- Take a conversation's lease with a new fencing epoch, unless another owner holds it unexpired:
-- epoch, expires_ms; or nil and the LEASE_HELD "<expires_ms> <owner>" error reply to return.
local function take_lease(lease_key, epoch_key, owner, ttl_ms, now)
  local held = redis.call('HMGET', lease_key, 'owner', 'expires')
  if held[1] and held[1] ~= owner and tonumber(held[2]) > now then
    return nil, redis.error_reply('LEASE_HELD ' .. held[2] .. ' ' .. held[1])
  end
  local epoch = redis.call('INCR', epoch_key)
  local expires = now + ttl_ms
  redis.call('HSET', lease_key, 'owner', owner, 'epoch', epoch, 'expires', expires)
  return epoch, expires
end
