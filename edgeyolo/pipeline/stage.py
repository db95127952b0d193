"""A build stage: the class each stage is, and the registry that holds them in build order."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeyolo.registry import Registry

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build
    from edgeyolo.pipeline.core import Artifact


class Stage(ABC):
    """One step of a build, cached by the hash of its parameters, its upstream key and its input files."""

    name: ClassVar[str]

    @abstractmethod
    def params(self, build: Build) -> dict[str, Any]:
        """What enters the stage's cache key besides its inputs: a change re-runs it and every stage after it."""

    @abstractmethod
    def skip_reason(self, build: Build) -> str | None:
        """Why the stage does not apply to this build (the plan prints it), or None to run it."""

    @abstractmethod
    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        """Do the stage on ``art`` with outputs in ``folder`` (empty, created): the artifact and its metrics."""


BUILD_STAGES: Registry[type[Stage]] = Registry("build stage")


def stage_names() -> tuple[str, ...]:
    """The registered stages' names, in the order a build runs them."""
    return tuple(name for name, _ in BUILD_STAGES.in_order())


def common_params(build: Build) -> dict[str, Any]:
    """The part of every stage's cache key that every stage shares."""
    r, req = build.recipe, build.request
    return {"img_size": r.img_size, "seed": r.seed, "data": req.data, "demo": req.demo}


def needs_data(build: Build) -> str | None:
    """The skip reason of a stage that trains or calibrates when the build has no dataset."""
    return None if build.has_data else "needs --data"
