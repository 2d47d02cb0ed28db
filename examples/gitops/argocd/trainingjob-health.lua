-- Argo CD health of a kubemaas.io TrainingJob, from the conditions the operator sets.
-- Succeeded=True: Healthy. Failed=True: Degraded. Suspended=True: Suspended. Anything else: Progressing.
-- Conditions written for an older generation do not count: the operator has not seen the change yet.
local hs = {status = "Progressing", message = "Waiting for the operator"}

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(conditions, kind)
  local c = condition(conditions, kind)
  return c ~= nil and c.status == "True", c
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local conditions = obj.status.conditions
local succeeded, s = is_true(conditions, "Succeeded")
local failed, f = is_true(conditions, "Failed")
local suspended, p = is_true(conditions, "Suspended")
local running, r = is_true(conditions, "Running")
if failed then
  hs.status = "Degraded"
  hs.message = describe(f, "Failed")
elseif succeeded then
  hs.status = "Healthy"
  hs.message = describe(s, "Succeeded")
elseif suspended then
  hs.status = "Suspended"
  hs.message = describe(p, "Suspended")
elseif running then
  hs.message = describe(r, "Running")
else
  hs.message = describe(condition(conditions, "Created"), "Waiting for the training pods")
end
return hs
