"""trainyard: a self-hosted batch system for training ML models on GPU/CPU clusters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "JobSpec", "__version__", "report"]

if TYPE_CHECKING:
    from trainyard.client import Client
    from trainyard.reporting import report
    from trainyard.spec import JobSpec


def __getattr__(name: str) -> Any:
    # Lazy so that `import trainyard` inside a job (for trainyard.report) stays cheap.
    if name == "Client":
        from trainyard.client import Client

        return Client
    if name == "JobSpec":
        from trainyard.spec import JobSpec

        return JobSpec
    if name == "report":
        from trainyard.reporting import report

        return report
    raise AttributeError(name)
