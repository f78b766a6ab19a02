-- Take a cross-replica fill's lock and clear an earlier leader's records, in one round trip.
-- KEYS[1] - the flight's lock, KEYS[2] - its stream, KEYS[3] - its follower count,
-- KEYS[4] - (optional) the entry the answer is stored under
-- ARGV[1] - the leader's token, ARGV[2] - the lock's TTL (ms), ARGV[3] - 1: leave the lock
-- alone when the entry exists (taken ahead of a lookup that will most likely hit then)
-- Returns 0 if another owner holds the lock; 1 if taken; 2 if taken while the entry
-- exists (the records are then left alone: the caller reads the entry, and late followers
-- may still be reading the stream of the leader that stored it); 3 if the entry exists and
-- ARGV[3] is 1 (nothing taken).
local stored = KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1
if stored and ARGV[3] == '1' then return 3 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if stored then return 2 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
