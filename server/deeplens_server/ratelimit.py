"""Per-tenant request rate limits: a token bucket in Redis, shared by every server replica."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from deeplens_server.errors import ResourceExhausted

# Refills `rate` tokens per second up to `burst`; takes one. Uses the Redis clock, so replicas agree.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait_ms}
"""


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_TOKEN_BUCKET)

    async def take(self, subject: str, per_second: int) -> None:
        """Takes one request from ``subject``'s bucket; raises ``ResourceExhausted`` with a retry delay."""
        if per_second <= 0:
            return
        try:
            allowed, wait_ms = await self._script(keys=[f"deeplens:rate:{subject}"], args=[per_second, 2 * per_second])
        except RedisError:
            return  # fail open: rate limiting must not take the API down with Redis
        if not int(allowed):
            raise ResourceExhausted(
                "request rate limit exceeded",
                reason="RATE_LIMITED",
                retry_after=int(wait_ms) / 1000,
                metadata={"requests_per_second": str(per_second)},
            )
