"""The scheduler: priority, placement, dispatch, and applying what the nodes report."""
