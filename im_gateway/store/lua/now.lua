-- The prologue of every script that reads the clock: ``now``, the server's time in ms
-- (TIME on the Redis server, so gateways with skewed clocks agree). Effects replication
-- (the default since Redis 5) allows writes after TIME; the call keeps 3.2-4.x happy too.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
