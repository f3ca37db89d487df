"""SAM-aware experiment planning: nnU-Net's planner with patch and batch size sized for our networks."""
from sam_nnunet.planners.sam_planner import DEFAULT_PLANS_NAME, PlanningError, SAMPlanner

# planners ``sam-nnunet plan_and_preprocess -pl NAME`` finds (nnU-Net only searches its own package)
PLANNERS = {"SAMPlanner": SAMPlanner}

__all__ = ["SAMPlanner", "PlanningError", "PLANNERS", "DEFAULT_PLANS_NAME"]
