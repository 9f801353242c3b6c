-- Documents ingested since the active index's golden-set recall was last measured.
-- KEYS: the counter.  ARGV: documents just ingested, the threshold.
-- Returns 1 (and resets the counter) when the threshold is reached: the caller sends one measurement.
local n = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
