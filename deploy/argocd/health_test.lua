-- Runs health.lua on status samples: lua5.4 health_test.lua (from this folder
-- or with its path). Exits non-zero on the first wrong answer.
local dir = arg[0]:match("(.*/)") or "./"
local chunk = assert(loadfile(dir .. "health.lua", "t"))

local function check(name, o, want)
  obj = o
  local hs = chunk()
  if hs.status ~= want then
    io.stderr:write(string.format("%s: got %s (%s), want %s\n", name, hs.status, hs.message, want))
    os.exit(1)
  end
  print(string.format("ok %s -> %s", name, hs.status))
end

local function cr(gen, status) return { metadata = { generation = gen }, status = status } end
local function conds(ready, reason, stalled)
  return {
    { type = "Ready", status = ready, reason = reason },
    { type = "Reconciling", status = "False", reason = reason },
    { type = "Stalled", status = stalled or "False", reason = reason },
  }
end

check("no status yet", { metadata = { generation = 1 } }, "Progressing")
check("succeeded", cr(2, { observedGeneration = 2, phase = "Succeeded", conditions = conds("True", "Succeeded") }), "Healthy")
check("stale observedGeneration", cr(3, { observedGeneration = 2, phase = "Succeeded", conditions = conds("True", "Succeeded") }), "Progressing")
check("awaiting approval", cr(1, { observedGeneration = 1, phase = "AwaitingApproval", conditions = conds("False", "AwaitingApproval") }), "Suspended")
check("paused", cr(1, { observedGeneration = 1, phase = "Paused", conditions = conds("False", "Paused") }), "Suspended")
check("dry run", cr(1, { observedGeneration = 1, phase = "Pending", conditions = conds("False", "DryRun") }), "Suspended")
check("failed validation", cr(1, { observedGeneration = 1, phase = "Failed", conditions = conds("False", "ProxyDeploymentNotFound", "True") }), "Degraded")
check("drift", cr(1, { observedGeneration = 1, phase = "WaitingForAdminService", conditions = conds("False", "DriftDetected", "True") }), "Degraded")
check("rolled back after a timeout", cr(1, { observedGeneration = 1, phase = "RolledBack", conditions = conds("False", "RolledBack", "True") }), "Degraded")
check("rolled back on request", cr(2, { observedGeneration = 2, phase = "RolledBack", conditions = conds("True", "RolledBack") }), "Healthy")
check("in progress", cr(1, { observedGeneration = 1, phase = "DeployingController", conditions = conds("False", "DeployingController") }), "Progressing")
print("health.lua: all samples passed")
