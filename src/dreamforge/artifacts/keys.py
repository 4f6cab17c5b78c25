"""Deterministic artifact keys: a re-run of the same item writes the same key."""


def artifact_key(job_id: str, step_index: int, step_type: str, item_index: int) -> str:
    return f"jobs/{job_id}/{step_index:02d}-{step_type}/{item_index:03d}.png"
