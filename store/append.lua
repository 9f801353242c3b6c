-- The one fenced append. Durable items go to the log and are mirrored to the live stream under the
-- same id; live-only items (token deltas) go to the live stream only. Ids are generated here, in one
-- sequence per conversation, so the log's ids are a subsequence of the live stream's and a client can
-- resume from any id it saw in either.
-- KEYS: log, live, lease, inbox cursor, inbox.
-- ARGV: epoch, expected last log id ('' = unchecked), live maxlen, live ttl ms,
--       consumed inbox id ('' = none), then pairs of flag ('d' durable, 'l' live-only) and payload.
-- Returns the new ids in order, then the inbox's newest entry ('0-0': empty) as the append leaves it: the
-- writer knows without another read whether anything waits there (consumed entries are trimmed).
local log_key, live_key, lease_key, cursor_key, inbox_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local epoch, expected_last, live_maxlen, live_ttl_ms, consumed =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local now = now_ms()
local err = fence_error(lease_key, epoch, now)
if err then return err end

local last_log = top_id(log_key)
if expected_last ~= '' and compare_ids(expected_last, last_log) ~= 0 then
  return redis.error_reply('LOG_MOVED the writer expected the log to end at ' .. expected_last
    .. ' but it ends at ' .. last_log)
end

if consumed ~= '' and compare_ids(consumed, top_id(inbox_key)) > 0 then
  return redis.error_reply('BAD_INPUT inbox id ' .. consumed .. ' was never posted')
end

local last = last_log
local last_live = top_id(live_key)
if compare_ids(last_live, last) > 0 then last = last_live end
local ms, seq = parse_id(last)

local ids = {}
for i = 6, #ARGV, 2 do
  if now > ms then ms, seq = now, 0 else seq = seq + 1 end
  local id = format_id(ms, seq)
  if ARGV[i] == 'd' then
    redis.call('XADD', log_key, id, 'e', ARGV[i + 1])
  end
  redis.call('XADD', live_key, 'MAXLEN', '~', live_maxlen, id, 'e', ARGV[i + 1])
  ids[#ids + 1] = id
end
if #ids > 0 then redis.call('PEXPIRE', live_key, live_ttl_ms) end

if consumed ~= '' then
  local cursor = redis.call('GET', cursor_key)
  if cursor == false or compare_ids(consumed, cursor) > 0 then
    redis.call('SET', cursor_key, consumed)
    -- Everything up to the cursor is in the log now; the inbox keeps only what is still to be taken.
    local c_ms, c_seq = parse_id(consumed)
    redis.call('XTRIM', inbox_key, 'MINID', format_id(c_ms, c_seq + 1))
  end
end
ids[#ids + 1] = top_id(inbox_key)
return ids
