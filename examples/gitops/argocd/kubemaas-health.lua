-- Argo CD health of the kubemaas.io kinds, from the conditions the operator sets. One script serves both
-- kinds (argocd-cm maps kubemaas.io_TrainingJob and kubemaas.io_ModelService to it); Argo CD runs it with
-- the object as `obj` and reads `status` and `message` of the returned table.
--
-- TrainingJob: Failed=True Degraded; Succeeded=True Healthy; Suspended=True Suspended; else Progressing.
-- ModelService: Degraded=True, or Ready=False with nothing in progress (a spec or model the operator
-- cannot serve), Degraded; Ready=True while a rollout is in progress Progressing; Ready=True Healthy (a
-- blocked promotion keeps the old version serving, so it stays Healthy and says why); else Progressing.
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

-- "True", "False" or "Unknown" (also when the condition is absent), and the condition itself.
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

local function training_job(conditions)
  local failed, f = status_of(conditions, "Failed")
  local succeeded, s = status_of(conditions, "Succeeded")
  local suspended, p = status_of(conditions, "Suspended")
  local running, r = status_of(conditions, "Running")
  if failed == "True" then
    hs.status = "Degraded"
    hs.message = describe(f, "Failed")
  elseif succeeded == "True" then
    hs.status = "Healthy"
    hs.message = describe(s, "Succeeded")
  elseif suspended == "True" then
    hs.status = "Suspended"
    hs.message = describe(p, "Suspended")
  elseif running == "True" then
    hs.message = describe(r, "Running")
  else
    hs.message = describe(condition(conditions, "Created"), "Waiting for the training pods")
  end
end

local function model_service(conditions)
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
if obj.kind == "TrainingJob" then
  training_job(obj.status.conditions)
elseif obj.kind == "ModelService" then
  model_service(obj.status.conditions)
else
  hs.status = "Unknown"
  hs.message = "Not a kubemaas.io kind: " .. tostring(obj.kind)
end
return hs
