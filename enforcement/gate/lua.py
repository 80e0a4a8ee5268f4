"""The Redis gate's Lua scripts: the twins of ``core.py`` (read them side by side).

Each script runs atomically, reads the time with ``TIME`` (so every gateway process shares one
clock), and touches only keys of one account, all declared in KEYS under one hash tag. Numbers
are integers below 2**53 (times in µs), exact as Lua doubles; a number passed to ``redis.call``
is written with 17 significant digits, so exactly. Settings are prepended as ``local`` constants
by ``render``, so a check sends only the key id and the token count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRELUDE = """
local MINUTE_US, PPM = 60000000, 1000000
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function effective(limit, ppm)  -- core.effective, exact for limits below 1e15
  if ppm >= PPM then return limit end
  if limit <= 0 then return 0 end
  local high = math.floor(limit / PPM)
  return math.max(high * ppm + math.floor((limit - high * PPM) * ppm / PPM), 1)
end
"""

# KEYS: cfg, key usage, account usage, denial buckets, denied keys. ARGV: key_id, tokens.
# Returns {reason, limit_req, remaining_req, reset_req_ms, limit_tok, remaining_tok,
#          reset_tok_ms, retry_ms, denials_in_window, denied_keys_last_minute}.
CHECK = """
local key_id, tokens = ARGV[1], tonumber(ARGV[2])
local now = now_us()
local now_ms = math.floor(now / 1000)
local cfg = redis.call('HMGET', KEYS[1], 'st', 'lim:' .. key_id, 'lim', 'thr')

local function limits(packed)
  if not packed then return DEFAULT_RPM, DEFAULT_TPD end
  local rpm, tpd = string.match(packed, '^(%d+)|(%d+)|')
  return tonumber(rpm), tonumber(tpd)
end
local key_rpm, key_tpd = limits(cfg[2])
local acct_rpm, acct_tpd = limits(cfg[3])

local acct_ppm, key_ppm = PPM, PPM  -- core.throttle_ppm
if cfg[4] then
  for _, th in pairs(cjson.decode(cfg[4])) do
    if th.l == 0 and (th.e == 0 or now_ms < th.e) then
      if th.k == '' then acct_ppm = math.min(acct_ppm, th.f)
      elseif th.k == key_id then key_ppm = math.min(key_ppm, th.f) end
    end
  end
end
key_ppm = math.min(key_ppm, acct_ppm)

local window = math.floor(now / WINDOW_US)
local window_end = (window + 1) * WINDOW_US
local ku = redis.call('HMGET', KEYS[2], 't', 'w', 'n')
local au = redis.call('HMGET', KEYS[3], 't', 'w', 'n')
local key_tat, acct_tat = tonumber(ku[1]) or 0, tonumber(au[1]) or 0
local key_used = (tonumber(ku[2]) == window and tonumber(ku[3])) or 0
local acct_used = (tonumber(au[2]) == window and tonumber(au[3])) or 0

-- A scope: {fits, limit, remaining, reset_us, retry_us, cost, reset_cost_us} (core.Scope).
local function request_scope(tat, limit)
  local interval = math.ceil(MINUTE_US / limit)
  local period = interval * limit
  local used = math.max(tat - now, 0)
  local fits = used + interval <= period
  local remaining = math.max(math.floor((period - used) / interval), 0)
  return {fits, limit, remaining, used, fits and 0 or used + interval - period, 1, interval}
end
local function token_scope(used, limit)
  local fits = used + math.max(tokens, 1) <= limit
  local reset = window_end - now
  return {fits, limit, math.max(limit - used, 0), reset, fits and 0 or reset, tokens, 0}
end
local kr = request_scope(key_tat, effective(key_rpm, key_ppm))
local ar = request_scope(acct_tat, effective(acct_rpm, acct_ppm))
local kt = token_scope(key_used, effective(key_tpd, key_ppm))
local at = token_scope(acct_used, effective(acct_tpd, acct_ppm))

local reason, retry = 0, 0  -- core.refusal, core.verdict
if cfg[1] then
  local status, until_ms = string.match(cfg[1], '^(%a+)|(%d+)|')
  local until_us = tonumber(until_ms) * 1000
  if status == 'terminated' then reason = 4
  elseif status == 'suspended' and until_us == 0 then reason = 3
  elseif status == 'suspended' and now < until_us then reason, retry = 3, until_us - now end
end
if reason == 0 then
  for _, s in ipairs({kt, at}) do
    if not s[1] then reason = 2; retry = math.max(retry, s[5]) end
  end
  for _, s in ipairs({kr, ar}) do
    if not s[1] then
      if reason == 0 then reason = 1 end
      retry = math.max(retry, s[5])
    end
  end
end

local denials, denied_keys = 0, 0
if reason == 0 then
  local function take(key, tat, limit, used)
    local new_tat = math.max(tat, now) + math.ceil(MINUTE_US / limit)
    redis.call('HSET', key, 't', new_tat, 'w', window, 'n', used + tokens)
    local expire_ms = math.ceil(new_tat / 1000)
    if used + tokens > 0 then expire_ms = math.max(expire_ms, window_end / 1000) end
    redis.call('PEXPIREAT', key, expire_ms)
  end
  take(KEYS[2], key_tat, kr[2], key_used)
  take(KEYS[3], acct_tat, ar[2], acct_used)
elseif reason <= 2 then
  local bucket = math.floor(now / BUCKET_US)
  redis.call('HINCRBY', KEYS[4], bucket, 1)
  local all = redis.call('HGETALL', KEYS[4])
  for i = 1, #all, 2 do
    if tonumber(all[i]) > bucket - BUCKETS then denials = denials + tonumber(all[i + 1])
    else redis.call('HDEL', KEYS[4], all[i]) end
  end
  redis.call('PEXPIRE', KEYS[4], (BUCKETS + 1) * BUCKET_US / 1000)
  redis.call('ZADD', KEYS[5], now_ms, key_id)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - DENIED_KEYS_MS)
  denied_keys = redis.call('ZCARD', KEYS[5])
  if denied_keys > DENIED_KEYS_CAP then
    redis.call('ZREMRANGEBYRANK', KEYS[5], 0, denied_keys - DENIED_KEYS_CAP - 1)
    denied_keys = DENIED_KEYS_CAP
  end
  redis.call('PEXPIRE', KEYS[5], DENIED_KEYS_MS)
end
if cfg[1] or cfg[2] or cfg[3] or cfg[4] then redis.call('PEXPIRE', KEYS[1], STATE_TTL_MS) end

local function binding(k, a)  -- core.binding
  local k_rem, a_rem, k_reset, a_reset = k[3], a[3], k[4], a[4]
  if reason == 0 then
    k_rem, a_rem = k_rem - k[6], a_rem - a[6]
    k_reset, a_reset = k_reset + k[7], a_reset + a[7]
  end
  if a_rem < k_rem or (a_rem == k_rem and a[2] < k[2]) then
    return a[2], math.max(a_rem, 0), math.ceil(a_reset / 1000)
  end
  return k[2], math.max(k_rem, 0), math.ceil(k_reset / 1000)
end
local rl, rr, rs = binding(kr, ar)
local tl, tr, ts = binding(kt, at)
return {reason, rl, rr, rs, tl, tr, ts, math.ceil(retry / 1000), denials, denied_keys}
"""

# KEYS: denial buckets, denied keys. Returns {denials_in_window, denied_keys_last_minute}.
DENIAL_STATS = """
local now = now_us()
local bucket = math.floor(now / BUCKET_US)
local all = redis.call('HGETALL', KEYS[1])
local denials = 0
for i = 1, #all, 2 do
  if tonumber(all[i]) > bucket - BUCKETS then denials = denials + tonumber(all[i + 1]) end
end
local horizon = string.format('(%.0f', math.floor(now / 1000) - DENIED_KEYS_MS)
return {denials, redis.call('ZCOUNT', KEYS[2], horizon, '+inf')}
"""

# KEYS: cfg. ARGV: field, value without version, version. An item's value ends in |version.
SET_VERSIONED = """
local field, version = ARGV[1], tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[1], field)
if current and tonumber(string.match(current, '|(%d+)$')) >= version then return 0 end
redis.call('HSET', KEYS[1], field, ARGV[2] .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], STATE_TTL_MS)
return 1
"""

# KEYS: cfg. ARGV: throttle_id, version, then for an apply: key_id ('' = account), ppm,
# expires_ms (0 = none); none for a lift. Throttles: cfg field thr, JSON {id: {k, f, e, v, l}}.
THROTTLE = """
local id, version = ARGV[1], tonumber(ARGV[2])
local now_ms = math.floor(now_us() / 1000)
local raw = redis.call('HGET', KEYS[1], 'thr')
local throttles = raw and cjson.decode(raw) or {}

local function prune()  -- core.prune_throttles
  local lifted = {}
  for tid, th in pairs(throttles) do
    if th.e > 0 and th.e <= now_ms then throttles[tid] = nil
    elseif th.l == 1 then table.insert(lifted, {th.v, tid}) end
  end
  if #lifted > LIFTED_CAP then
    table.sort(lifted, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    for i = 1, #lifted - LIFTED_CAP do throttles[lifted[i][2]] = nil end
  end
end

prune()
local current = throttles[id]
local applied = 0
if not (current and current.v >= version) then
  applied = 1
  if ARGV[3] then
    throttles[id] = {k = ARGV[3], f = tonumber(ARGV[4]), e = tonumber(ARGV[5]), v = version, l = 0}
  elseif current then
    current.v, current.l = version, 1
  else
    throttles[id] = {k = '', f = PPM, e = 0, v = version, l = 1}
  end
  prune()
end
if next(throttles) == nil then redis.call('HDEL', KEYS[1], 'thr')
else redis.call('HSET', KEYS[1], 'thr', cjson.encode(throttles)) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], STATE_TTL_MS) end
return applied
"""


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str


def render(body: str, **constants: int) -> Script:
    """The script with its settings as ``local`` constants, and its SHA1 for EVALSHA."""
    header = "".join(f"local {name} = {int(value)}\n" for name, value in constants.items())
    source = header + PRELUDE + body
    return Script(source, hashlib.sha1(source.encode()).hexdigest())
