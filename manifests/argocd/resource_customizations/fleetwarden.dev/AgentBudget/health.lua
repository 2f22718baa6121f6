-- Argo CD health of a fleetwarden.dev AgentBudget, from the status the operator writes
-- (status.state, status.conditions, status.summary). Checked in this order:
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   Killed (KillSwitchEngaged) or Exceeded (BudgetExceeded)              -> Degraded
--   Suspended (spec.suspend)                                              -> Suspended
--   Unknown (no metrics: MetricsAvailable=False)                          -> Progressing
--   ApprovalPending=True (a CostApproval waits for a person)              -> Suspended
--   Warning                                                               -> Healthy, with a message
--   Active                                                                -> Healthy
-- Argo CD runs this without Lua's standard libraries (no string or math): base and table only.
local hs = {}

local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function message(kind, default)
  local c = condition(kind)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return default
end

local function spending()
  local s = obj.status.summary
  if s == nil or s.percentUsed == nil or s.window == nil then
    return "spend is known"
  end
  return tostring(s.percentUsed) .. "% of the " .. s.window .. " cap used (" ..
    tostring(s.spendUSD) .. " of " .. tostring(s.capUSD) .. " USD)"
end

if obj.status == nil or obj.status.state == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to evaluate the budget"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to evaluate generation " .. tostring(generation) ..
    " (status is of generation " .. tostring(observed) .. ")"
  return hs
end

local state = obj.status.state
if state == "Killed" then
  hs.status = "Degraded"
  hs.message = message("KillSwitchEngaged", "Kill switch engaged: the agents are scaled to zero")
  return hs
end
if state == "Exceeded" then
  hs.status = "Degraded"
  hs.message = message("BudgetExceeded", "Spend is past a cap")
  return hs
end
if state == "Suspended" then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: the agents are scaled to zero"
  return hs
end
if state == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Metrics unavailable: " .. message("MetricsAvailable", "spend is unknown")
  return hs
end

local pending = condition("ApprovalPending")
if pending ~= nil and pending.status == "True" then
  hs.status = "Suspended"
  hs.message = message("ApprovalPending", "A CostApproval waits for a decision")
  return hs
end

if state == "Warning" then
  hs.status = "Healthy"
  hs.message = "Warning: " .. spending()
  return hs
end
if state == "Active" then
  hs.status = "Healthy"
  hs.message = spending()
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown state " .. tostring(state)
return hs
