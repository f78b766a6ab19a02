-- Release a token lock, only if it is still this owner's: a lock that expired and was
-- taken by another owner must never be released by the one before.
-- KEYS[1] - lock name
-- ARGV[1] - token
-- Returns 1 if released, 0 if not held with this token.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
