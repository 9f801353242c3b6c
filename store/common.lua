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
