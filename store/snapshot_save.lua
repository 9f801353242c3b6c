-- Save a fenced snapshot of a conversation's folded state as of log entry `last_id` (`save_snapshot`).
-- KEYS: snapshot hash, lease, log.  ARGV: epoch, last_id, state bytes.  Returns the server time.
local now = now_ms()
local err = save_snapshot(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], now)
if err then return err end
return now
