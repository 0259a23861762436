-- Lua: tables and strings that grow, closures, integer arithmetic and the incremental
-- collector. rt_loop.lua DIR STEPS HOLD: reads DIR/seed at start, one line per step, waits
-- for DIR/go at step HOLD, ends with a digest (an FNV-1a over everything it kept).
local dir, steps, hold = arg[1], tonumber(arg[2]), tonumber(arg[3])
local f = assert(io.open(dir .. "/seed"))
local s = math.tointeger(tonumber(f:read("l")))
f:close()
io.stdout:setvbuf("line")
local function fnv(str, h)
  h = h or 0xcbf29ce484222325
  for i = 1, #str do
    h = (h ~ str:byte(i)) * 0x100000001b3
  end
  return h
end
local function exists(p)
  local fh = io.open(p)
  if fh then fh:close() return true end
  return false
end
local kept = {}
local function mixer(k) return function(x) return (x * 6364136223846793005 + k) ~ (x >> 29) end end
for step = 1, steps do
  if step == hold then
    local deadline = os.time() + 600
    while not exists(dir .. "/go") do
      assert(os.time() < deadline, "go never appeared")
      os.execute("sleep 0.005")
    end
  end
  local mix = mixer(step)
  for _ = 1, 100000 do s = mix(s) end
  local row = {}
  for i = 1, 64 do row[i] = string.format("%x", (s ~ i) & 0xffffff) end
  kept[step] = table.concat(row, ",")
  print(string.format("step %d %016x %016x", step, s, fnv(kept[step])))
end
local h
for step = 1, steps do h = fnv(kept[step], h) end
print(string.format("done %d %016x", steps, h))
