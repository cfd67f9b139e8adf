"""The Batch AI 2018-05-01 REST surface under /arm: one router gathering every resource's routes.

Each module of this package exposes `router: APIRouter` (paths relative to /arm); those present are
included in the order below. See common.py for what they share (api-version, CloudError, ids, paging).
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter

from trainyard.api.arm import common as common  # app.py installs its error handlers
from trainyard.api.arm.common import PREFIX

# Later modules' routes are matched after earlier ones': the most literal paths come first.
MODULES = ("operations", "workspaces", "experiments", "jobs", "job_files", "links", "clusters", "fileservers",
           "identity")  # fmt: skip


def _router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["Batch AI (ARM)"])
    for name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # a module that is there but cannot import is a bug, not an absent feature
            continue
        router.include_router(module.router)
    return router


router = _router()
