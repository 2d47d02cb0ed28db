-- Argo CD health of a kubemaas.io ModelService, from the conditions the operator sets.
-- Degraded=True, or Ready=False with nothing in progress (a spec or model the operator cannot serve):
-- Degraded. Ready=True while a rollout is in progress: Progressing. Ready=True: Healthy (a blocked
-- promotion keeps the old version serving, so it stays Healthy and says why). Otherwise: Progressing.
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

local function status_of(conditions, kind)
  local c = condition(conditions, kind)
  if c == nil then
    return "Unknown", nil
  end
  return c.status, c
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
local ready, r = status_of(conditions, "Ready")
local progressing, p = status_of(conditions, "Progressing")
local degraded, d = status_of(conditions, "Degraded")
local blocked, b = status_of(conditions, "PromotionBlocked")
if degraded == "True" then
  hs.status = "Degraded"
  hs.message = describe(d, "Degraded")
elseif ready == "False" and progressing ~= "True" then
  hs.status = "Degraded"
  hs.message = describe(r, "NotReady")
elseif ready == "True" and progressing == "True" then
  hs.message = describe(p, "Progressing")
elseif ready == "True" then
  hs.status = "Healthy"
  hs.message = describe(r, "Ready")
  if blocked == "True" then
    hs.message = hs.message .. " (promotion blocked: " .. describe(b, "PromotionBlocked") .. ")"
  end
else
  hs.message = describe(p or r, "Waiting for the serving pods")
end
return hs
