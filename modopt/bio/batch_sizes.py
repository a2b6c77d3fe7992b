"""The batch size of a multi-start fit chosen while it runs (``batch_size="auto"``)."""

from __future__ import annotations


class BatchSizeChooser:
    """Picks, call by call, the batch size with the least wall time per start.

    A ``vmap``-ped batch of ODE fits runs as long as its slowest start (every solve takes
    as many solver steps as the stiffest start's), while a batch of one pays the fixed
    cost of every solver step alone. Which wins depends on the problem (on 2 CPU cores,
    100 starts: batch 1 took 36 s on Bruno against 53 s for 8, but 307 s on Rahman
    against 157 s), so both are measured: every size is tried once (the largest first),
    then the cheapest per start is used, and each other size is tried again once
    `explore_after` times its size, times its cost per start over the cheapest's, in
    start-calls have been run since it was last seen, as the cost moves during a fit
    (starts get stiffer as they near some optima). A size twice as costly is looked at
    half as often: on Fiedler a batch of 8 waits for its stiffest start and costs 2-10
    times a batch of 1 per start.

    **Arguments:** `sizes`: the candidate batch sizes; `explore_after`: see above.
    """

    def __init__(self, sizes, explore_after: int = 16):
        self.sizes = sorted(set(sizes), reverse=True)
        self.explore_after = explore_after
        self.seconds_per_start = dict.fromkeys(self.sizes)
        self.calls = dict.fromkeys(self.sizes, 0)
        self._work = 0
        self._last_seen = dict.fromkeys(self.sizes, 0)

    def next(self) -> int:
        """The batch size of the next call."""
        for size in self.sizes:
            if self.seconds_per_start[size] is None:
                return size
        best = min(self.sizes, key=self.seconds_per_start.get)
        for size in self.sizes:
            ratio = self.seconds_per_start[size] / max(self.seconds_per_start[best], 1e-12)
            if (size != best and self._work - self._last_seen[size]
                    >= self.explore_after * size * ratio):
                return size
        return best

    def record(self, size: int, seconds: float, starts: int) -> None:
        """A call of batch `size` with `starts` live starts took `seconds`."""
        cost = seconds / max(starts, 1)
        old = self.seconds_per_start[size]
        # A batch of many starts is a better estimate than one start: weigh by count.
        weight = 1.0 if old is None else starts / (starts + 4)
        self.seconds_per_start[size] = cost if old is None else old + weight * (cost - old)
        self.calls[size] += 1
        self._work += starts
        self._last_seen[size] = self._work
