-- Argo CD health for kubetune.io FineTuneJob (docs/gitops.md has the reasoning and the table).
-- Reads only status written by the operator; Lua 5.1 with base and table libraries only, so it
-- runs from argocd-cm without resource.customizations.useOpenLibs.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function say(text, fallback)
  if text ~= nil and text ~= "" then
    return text
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

-- The operator saw this generation and will not apply it (a Job's pod template is immutable):
-- someone has to revert the edit or recreate the job, so it needs attention.
local applied = condition(status, "SpecApplied")
if applied ~= nil and applied.status == "False" and applied.observedGeneration == obj.metadata.generation then
  hs.status = "Degraded"
  hs.message = say(applied.message, "The spec change is not applied")
  return hs
end

if status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on the spec (generation " .. tostring(obj.metadata.generation) .. ")"
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  -- Only a user's spec.suspend: an app with a Suspended resource reads Suspended as a whole.
  hs.status = "Suspended"
elseif phase == "Pending" then
  -- Stalled=True while Pending: a blocker (unschedulable, missing Secret, image pull, quota)
  -- that someone must fix; the job goes on by itself once fixed, and this check follows.
  local stalled = condition(status, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
elseif phase == "Queued" or phase == "Validating" or phase == "Running" then
  -- Queued waits for Kueue's admission: work in progress, not a user's pause (argo-cd #19126).
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
  return hs
end
hs.message = say(status.message, phase)
return hs
