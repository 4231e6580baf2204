-- Argo CD health check for sidecar-migrator.dev/SidecarMigration.
-- Install: argocd-cm, key resource.customizations.health.sidecar-migrator.dev_SidecarMigration
--
-- It reads the operator's kstatus conditions, as deploy/flux/kustomization.yaml
-- does for Flux, and both say the same (README, "GitOps"; tests/gitops_health.rs
-- runs this file in Argo CD's own code):
--
--   no status yet                                 Progressing   (Flux: Unknown, see there)
--   status older than the spec, or empty          Progressing   (InProgress)
--   Stalled=True (Failed, drift, a timed-out step
--     on hold, a refused rollback, an unrequested
--     rollback: a person must act)                Degraded      (Failed)
--   Ready=True (Succeeded; RolledBack because
--     spec.rollback asked for it)                 Healthy       (Current)
--   AwaitingApproval, Paused, dry run             Suspended     (InProgress: Flux has none)
--   anything else                                 Progressing   (InProgress)
--
-- Stalled comes before Ready: a refused rollback keeps Ready=True (the
-- migrated install works) but the spec asks what will not happen.
-- A status without a Ready condition (written by hand, or by a tool that
-- drops conditions) is judged by its phase, by the operator's own rules
-- (src/plan/status.rs).
--
-- Argo CD opens only the base, table, package and a reduced os library for
-- an override: no string or math here.
local hs = { status = "Progressing", message = "waiting for the operator" }
local st = obj.status
if st == nil then
  return hs
end
if st.observedGeneration == nil or obj.metadata.generation == nil
    or st.observedGeneration ~= obj.metadata.generation then
  hs.message = "the operator has not acted on the latest spec yet"
  return hs
end

local ready, stalled, reason = nil, nil, nil
for _, c in ipairs(st.conditions or {}) do
  if c.type == "Ready" then ready = c.status; reason = c.reason end
  if c.type == "Stalled" then stalled = c.status end
end
hs.message = st.message or st.phase or ""

local requested = obj.spec ~= nil and obj.spec.rollback == true
if ready == nil then
  -- No conditions: what the operator writes for the phase.
  if st.phase == "Succeeded" or (st.phase == "RolledBack" and requested) then
    ready = "True"
  elseif st.phase == "Failed" or st.phase == "RolledBack" then
    stalled = "True"
  end
end

if stalled == "True" then
  hs.status = "Degraded"
elseif ready == "True" then
  hs.status = "Healthy"
elseif st.phase == "AwaitingApproval" or st.phase == "Paused" or reason == "DryRun" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
return hs
