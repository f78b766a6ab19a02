-- Take `amount` from a fixed-window budget, or nothing if it would go over.
-- KEYS[1] - the window's counter
-- ARGV[1] - amount, ARGV[2] - the window's limit, ARGV[3] - when the window ends (unix ms)
-- Returns {1 if taken else 0, the counter after}
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if current + amount > limit then
  return {0, current}
end
local after = redis.call('INCRBY', KEYS[1], amount)
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return {1, after}
