"""The trainer's hivemind.Optimizer: it records each gradient round's group size, and it leaves the swarm quietly.

Group size. hivemind 1.1.12 keeps the StepControl of the gradient-averaging round in the public attribute
``Optimizer.scheduled_grads``. After a ``step()`` that moved to the next global epoch it holds the control of the
round that step used -- a future whose result is the group's gathered data, one entry per peer -- or None when no
round began (a lone peer skips averaging). So no private method needs overriding: :class:`SwarmOptimizer` reads
it right after such a step. With ``delay_grad_averaging`` that round is still running then (it overlaps the next
epoch's compute): the control is kept and read at a later step, once it has finished.

Leaving quietly. An averager process that looks for a group polls the DHT hundreds of times a second; each
request carries a pipe that the DHT process fetches from the sender's ``multiprocessing`` resource sharer when it
reads the request. An averager that exits with a request still unread makes the DHT process log
``[ERROR] [hivemind.dht.dht._run] ... FileNotFoundError`` (or ConnectionResetError) with a traceback, and then
sleep through the grace period of its own shutdown. Three things left such requests behind at the end of a run:

- hivemind's ``StepControl.cancel()`` wakes the averager (``_cancel.set_result``) *before* it marks the step
  cancelled; an averager that looks in between concludes the step was not cancelled and keeps matchmaking
  until the round's deadline (``--averaging_timeout``). A lone peer pre-schedules and cancels a round every
  global epoch, so such a round was often still polling when the run ended. :func:`install_cancel_fix` makes
  cancel() mark the step first, then wake the averager.
- ``Optimizer.shutdown()`` cancels the round still looking for a group and stops the averagers at once, while
  the cancelled matchmaking still unwinds (its last DHT requests go out then). :func:`leave_swarm` cancels
  first, waits for the averagers to settle and for the DHT process to read everything sent so far, then shuts
  the optimizer and the DHT down. It also lets the progress tracker's shutdown watcher finish first (see there).
- With ``delay_state_averaging`` a state-averaging round runs in a background thread. When the run ended during
  one, ``Optimizer.shutdown()`` waited for the round and stopped the state averager right after, with its
  matchmaking still sending requests: with two peers, about one run in two ended with such tracebacks and
  "DHT did not shut down within the grace period" (the DHT process pauses 3 s after each request it cannot
  read). :func:`leave_swarm` waits for that round before the settling pause and the round trip.

Should a request still be left behind, :func:`leave_swarm` gives the DHT more time to shut down than one such
pause, and :func:`hivedata.train.quiet.quiet_hivemind` turns the DHT process's record of it into a debug line.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from typing import Any

import hivemind
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.utils.mpfuture import MPFuture

log = logging.getLogger(__name__)
DHT_SHUTDOWN_S = 10.0  # more than the DHT process's pause after a request it could not read (3 s) plus its shutdown


def _cancel_then_wake(self: StepControl) -> bool:
    """StepControl.cancel() in a race-free order: mark the step cancelled, then wake the averager to notice."""
    if not MPFuture.cancel(self):  # already finished (or cancelled): nothing to tell the averager
        return False
    if self._trigger is not None:
        self._trigger.cancel()
    if self._cancel is not None and not self._cancel.done():
        self._cancel.set_result(None)
    return True


def install_cancel_fix() -> None:
    """Makes every hivemind StepControl cancel in the order above (idempotent; see the module docstring)."""
    if StepControl.cancel is not _cancel_then_wake:
        StepControl.cancel = _cancel_then_wake


class SwarmOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer that remembers how many peers each gradient-averaging round included.

    Without delay_grad_averaging the size is read right after the step that ended the round; with it, the round's
    control is kept until it finishes (checked at every later step) and its size recorded then.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install_cancel_fix()
        super().__init__(*args, **kwargs)
        self.last_group_size = 1
        self.group_sizes: list[tuple[int, int]] = []  # (global epoch of the round, peers averaged with)
        self._downloaded = False  # the epoch moved because the state came from peers, not from a round
        self._running: list[tuple[int, StepControl]] = []  # delayed rounds still averaging: (epoch, control)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """hivemind's step(); when it ends a global epoch, records the size of that epoch's gradient round."""
        epoch, self._downloaded = self.local_epoch, False
        loss = super().step(*args, **kwargs)
        if self.local_epoch != epoch and not self._downloaded:
            control = self.scheduled_grads
            if self.delay_grad_averaging and control is not None and not control.done():
                self._running.append((epoch, control))
            else:
                self._record(epoch, round_group_size(control))
        self._collect_finished_rounds()
        return loss

    def _record(self, epoch: int, size: int) -> None:
        self.last_group_size = size
        self.group_sizes.append((epoch, size))

    def _collect_finished_rounds(self) -> None:
        """Records the sizes of delayed rounds that have finished since the last step, oldest first."""
        while self._running and self._running[0][1].done():
            epoch, control = self._running.pop(0)
            self._record(epoch, round_group_size(control))

    def load_state_from_peers(self, **kwargs: Any) -> None:
        """hivemind's download of the swarm's state (an epoch reached this way had no gradient round here)."""
        self._downloaded = True
        super().load_state_from_peers(**kwargs)


def round_group_size(control: StepControl | None) -> int:
    """Peers in a finished gradient round (its StepControl); 1 when there was none or it failed."""
    if control is None or not control.done() or control.cancelled():
        return 1
    try:
        return max(1, len(control.result(0)))
    except BaseException:  # the round failed: the step used local gradients
        return 1


async def _nothing(_dht: hivemind.DHT, _node: Any) -> None:
    """Runs in the DHT process: once it answers, every request sent before it has been read."""


def leave_swarm(opt: hivemind.Optimizer, dht: hivemind.DHT, *, settle_s: float = 0.3, timeout_s: float = 10.0) -> None:
    """Shuts the optimizer down, then the DHT, leaving no request of an exited averager unread by the DHT."""
    # the progress tracker's shutdown watcher finishes before the rest of the tracker is woken by opt.shutdown();
    # woken together, its event loop could stop with the watcher pending ("Task was destroyed but it is pending!")
    opt.tracker.shutdown_triggered.set()
    pending = []
    for name in ("scheduled_grads", "scheduled_state"):
        control = getattr(opt, name)
        if control is not None and not control.done() and control.stage == AveragingStage.LOOKING_FOR_GROUP:
            control.cancel()  # what opt.shutdown() would do, but while the averagers still run
            setattr(opt, name, None)
            pending.append(control)
    deadline = time.monotonic() + timeout_s
    while any(c.stage != AveragingStage.FINISHED for c in pending) and time.monotonic() < deadline:
        time.sleep(0.01)
    # a state-averaging round run in the background (delay_state_averaging) ends before its averager is stopped
    futures.wait(list(opt.state_averager.pending_updates), timeout=max(deadline - time.monotonic(), 0.0))
    time.sleep(settle_s)  # a finished or cancelled matchmaking unwinds (its last DHT requests go out), the watcher ends
    if dht.is_alive():
        try:
            dht.run_coroutine(_nothing, return_future=True).result(max(deadline - time.monotonic(), 1.0))
        except Exception as e:  # a DHT that does not answer is shut down below all the same
            log.debug("the DHT did not answer before shutdown: %r", e)
    opt.shutdown()
    dht.shutdown_timeout = max(dht.shutdown_timeout, DHT_SHUTDOWN_S)
    dht.shutdown()
