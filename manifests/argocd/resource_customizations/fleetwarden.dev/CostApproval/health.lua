-- Argo CD health of a fleetwarden.dev CostApproval, from status.decision:
--   no decision yet (pending)  -> Suspended: the agent's action waits for a person
--   Approved                   -> Healthy
--   Denied                     -> Degraded: the action the agent asked for was refused
--   Expired                    -> Degraded: nobody decided before spec.expiresAt, so the
--                                 action did not happen either
-- Argo CD runs this without Lua's standard libraries (no string or math): base and table only.
local hs = {}

local function because(prefix, reason)
  if reason ~= nil and reason ~= "" then
    return prefix .. ": " .. reason
  end
  return prefix
end

local spec = obj.spec or {}
local status = obj.status or {}
local decision = status.decision

if decision == nil or decision == "" then
  hs.status = "Suspended"
  local ask = "Waiting for a person to approve or deny"
  if spec.expiresAt ~= nil then
    ask = ask .. " before " .. spec.expiresAt
  end
  hs.message = because(ask, spec.reason) .. " (fleetwarden approve|deny " .. obj.metadata.name .. ")"
  return hs
end

local by = status.decidedBy or "unknown"
if decision == "Approved" then
  hs.status = "Healthy"
  hs.message = because("Approved by " .. by, status.reason)
  return hs
end
if decision == "Denied" then
  hs.status = "Degraded"
  hs.message = because("Denied by " .. by, status.reason)
  return hs
end
if decision == "Expired" then
  hs.status = "Degraded"
  hs.message = because("Expired", status.reason or ("nobody decided before " .. tostring(spec.expiresAt)))
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown decision " .. tostring(decision)
return hs
