-- Argo CD health check for sidecar-migrator.dev/SidecarMigration.
-- Install: argocd-cm, key resource.customizations.health.sidecar-migrator.dev_SidecarMigration
local hs = { status = "Progressing", message = "waiting for the operator" }
if obj.status == nil then
  return hs
end
local st = obj.status
if st.observedGeneration == nil or obj.metadata.generation == nil
    or st.observedGeneration < obj.metadata.generation then
  hs.message = "the operator has not acted on the latest spec yet"
  return hs
end

local ready, stalled, reason = nil, nil, nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then ready = c.status; reason = c.reason end
    if c.type == "Stalled" then stalled = c.status end
  end
end
hs.message = st.message or st.phase or ""

-- Succeeded is final: a status written without conditions (by hand, or by a
-- tool that drops them) is still a finished migration.
if ready == "True" or (ready == nil and st.phase == "Succeeded") then
  hs.status = "Healthy"
elseif st.phase == "Failed" or stalled == "True" then
  hs.status = "Degraded"
elseif st.phase == "AwaitingApproval" or st.phase == "Paused" or reason == "DryRun" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
return hs
