-- Renew a token lock's expiry, only if it is still this owner's.
-- KEYS[1] - lock name
-- ARGV[1] - token, ARGV[2] - new expiry (ms)
-- Returns 1 if renewed, 0 if the lock was lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
