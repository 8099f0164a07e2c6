-- Argo CD health for kubetune.io ModelDeployment (docs/gitops.md has the reasoning and the table).
-- Reads only status written by the operator; Lua 5.1 with base and table libraries only, so it
-- runs from argocd-cm without resource.customizations.useOpenLibs.
local hs = {}

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

if status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on the spec (generation " .. tostring(obj.metadata.generation) .. ")"
  return hs
end

local phase = status.phase
if phase == "Healthy" then
  hs.status = "Healthy"
elseif phase == "Progressing" then
  -- Stable replicas starting, or a canary stepping through its weights.
  hs.status = "Progressing"
elseif phase == "Paused" then
  -- A held canary (spec.paused, or an analysis that could not decide) waits for spec.promote or
  -- spec.abort, like a paused Argo Rollout.
  hs.status = "Suspended"
elseif phase == "RolledBack" or phase == "Degraded" then
  -- The revision the spec asks for is not served (rolled back, or its source cannot be served),
  -- or stable lost every ready replica: someone has to look.
  hs.status = "Degraded"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
  return hs
end
if status.message ~= nil and status.message ~= "" then
  hs.message = status.message
else
  hs.message = phase
end
return hs
