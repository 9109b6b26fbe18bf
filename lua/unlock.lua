-- unlock: delete a lock only if it still holds the caller's token (a lock that expired and was taken by
-- another process is not the caller's to remove).
-- KEYS: lock
-- ARGV: token
-- Returns 1 if deleted, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
