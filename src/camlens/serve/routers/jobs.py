"""``/api/jobs/JOB``: the progress of a request named with POST /api/explain's ``job`` field
(polled while it runs), and its cancellation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from camlens.serve.errors import BAD_PARAMETER
from camlens.serve.parameters import only_known_parameters
from camlens.serve.schemas import ErrorBody, JobOut
from camlens.serve.state import State

NO_JOB: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no job of that name (or no longer kept)"}
}

router = APIRouter(
    prefix="/api/jobs",
    tags=["jobs"],
    dependencies=[Depends(only_known_parameters)],
    responses={**NO_JOB, **BAD_PARAMETER},
)

JobName = Annotated[str, Path(description="the name given in POST /api/explain's job field")]


@router.get("/{job}")
async def get_job(st: State, job: JobName) -> JobOut:
    """A request's progress: queued or running, its perturbation passes done of those known,
    its phases, and an estimate of the seconds left."""
    return JobOut.model_validate(st.jobs.get(job).to_dict())


@router.delete("/{job}")
async def cancel_job(st: State, job: JobName) -> JobOut:
    """Cancels the request: it leaves the queue, or its batch stops at the next chunk of
    passes (once no other request of the batch is still wanted); its POST answers 409."""
    found = st.jobs.get(job)
    found.cancel()
    return JobOut.model_validate(found.to_dict())
