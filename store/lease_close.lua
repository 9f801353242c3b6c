-- An activation's end in one call: the snapshot (when one is given, fenced as `snapshot_save.lua`), the
-- lease given up (as `lease_release.lua`), and whether the inbox holds an entry newer than the last one
-- the activation looked at (an ask posted meanwhile, whose own wake-up found the lease held).
-- KEYS: lease, snapshot hash, log, inbox.
-- ARGV: epoch, newest inbox id seen ('' = none: nothing to compare), then optionally last_id, state bytes.
-- Returns {1 released / 0 no longer held, 1 a newer inbox entry / 0}; a refused snapshot is an error and
-- releases nothing.
local lease_key, snap_key, log_key, inbox_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local epoch, seen = ARGV[1], ARGV[2]
if ARGV[3] then
  local err = save_snapshot(snap_key, lease_key, log_key, epoch, ARGV[3], ARGV[4], now_ms())
  if err then return err end
end
local released = release_lease(lease_key, epoch)
local newer = 0
if seen ~= '' and compare_ids(top_id(inbox_key), seen) > 0 then newer = 1 end
return {released, newer}
