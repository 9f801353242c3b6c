-- Give the lease up at once, only if `epoch` still holds it. KEYS: lease hash. ARGV: epoch.
-- Returns 1 when released, 0 when this epoch no longer held it. Owner and epoch stay for diagnostics.
return release_lease(KEYS[1], ARGV[1])
