"""The pure core: specs, limits, states and progress."""

from __future__ import annotations

import pytest

from dreamforge.domain.access import visible_to
from dreamforge.domain.jobs import (
    JobRequest,
    JobSpec,
    JobStatus,
    Limits,
    ModelDefaults,
    Scheduler,
    can_transition,
    check_limits,
    resolve_spec,
)
from dreamforge.domain.progress import Stage, overall_progress

DEFAULTS = ModelDefaults(
    width=64, height=64, steps=4, guidance_scale=5.0, scheduler=Scheduler.EULER
)


def test_unset_fields_come_from_the_model_and_the_drawn_seed() -> None:
    spec = resolve_spec(JobRequest(prompt="  a cat  "), "m", DEFAULTS, lambda: 77)
    assert (spec.prompt, spec.width, spec.height, spec.steps, spec.seed, spec.model_id) == (
        "a cat",
        64,
        64,
        4,
        77,
        "m",
    )


def test_set_fields_win_even_when_falsy() -> None:
    spec = resolve_spec(
        JobRequest(prompt="x", guidance_scale=0, seed=0, width=128), "m", DEFAULTS, lambda: 77
    )
    assert (spec.guidance_scale, spec.seed, spec.width) == (0, 0, 128)


def test_each_item_gets_the_seed_plus_its_index_or_a_seed_of_its_own() -> None:
    given = resolve_spec(JobRequest(prompt="x", seed=10, count=3), "m", DEFAULTS, lambda: 0)
    assert given.seeds() == (10, 11, 12) and given.seed == 10 and given.count == 3
    wrapped = resolve_spec(JobRequest(prompt="x", seed=2**32 - 2, count=3), "m", DEFAULTS, int)
    assert wrapped.seeds() == (2**32 - 2, 2**32 - 1, 0)
    drawn = iter([7, 99, 3])
    own = resolve_spec(JobRequest(prompt="x", count=3), "m", DEFAULTS, lambda: next(drawn))
    assert own.seeds() == (7, 99, 3) and own.seed == 7


def test_a_job_stored_before_batches_still_has_its_one_seed() -> None:
    spec = JobSpec.model_validate(
        {
            "prompt": "x",
            "negative_prompt": "",
            "width": 64,
            "height": 64,
            "steps": 4,
            "guidance_scale": 5.0,
            "scheduler": "euler",
            "seed": 5,
            "model_id": "m",
        }
    )
    assert spec.seeds() == (5,) and spec.count == 1


def test_limits_name_each_field_over_them() -> None:
    spec = resolve_spec(
        JobRequest(prompt="x", width=1024, height=2048, steps=200), "m", DEFAULTS, lambda: 1
    )
    problems = check_limits(spec, Limits(max_width=512, max_height=1024, max_steps=150))
    assert [p.field for p in problems] == ["width", "height", "steps"]
    assert problems[0].fix == "use a width of at most 512"


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (JobStatus.QUEUED, JobStatus.RUNNING, True),
        (JobStatus.QUEUED, JobStatus.CANCELED, True),
        (JobStatus.QUEUED, JobStatus.SUCCEEDED, False),
        (JobStatus.RUNNING, JobStatus.QUEUED, True),
        (JobStatus.SUCCEEDED, JobStatus.RUNNING, False),
        (JobStatus.CANCELED, JobStatus.QUEUED, False),
    ],
)
def test_state_machine(current: JobStatus, target: JobStatus, allowed: bool) -> None:
    assert can_transition(current, target) is allowed


def test_progress_is_monotonic_through_the_stages() -> None:
    points = [overall_progress(Stage.QUEUED), overall_progress(Stage.LOADING_MODEL)]
    points += [overall_progress(Stage.DENOISING, step / 4) for step in range(1, 5)]
    points += [
        overall_progress(Stage.SAVING),
        overall_progress(Stage.SAVING, 1.0),
        overall_progress(Stage.DONE),
    ]
    assert points == sorted(points)
    assert points[0] == 0.0 and points[-1] == 1.0
    assert overall_progress(Stage.SAVING, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("tenant", "owner", "visible"),
    [
        ("acme", "acme", True),
        ("acme", "other", False),
        (None, "other", True),  # no tenant: the admin's view
        ("acme", None, False),  # there is no such job
    ],
)
def test_a_tenant_sees_its_own_and_an_admin_everyones(
    tenant: str | None, owner: str | None, visible: bool
) -> None:
    assert visible_to(tenant, owner) is visible
