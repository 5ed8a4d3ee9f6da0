"""A Zigbee device's set-up as a state machine: states x outcomes in two tables.

Why tables: the set-up used to be a deque of step names parsed back with
``step.startswith(("bind", "configure"))`` and ``step.endswith("metering")``, and what a
failed step meant was spread over three methods. Here, as in h11's state tables, one table
says what each step's outcome does (:data:`TRANSITIONS`), one says when a step does not
apply (:data:`SKIPS`), and :class:`DeviceSetup` only looks them up. It is pure: no clock, no
port, no request; the driver sends the request of :meth:`DeviceSetup.pending` and feeds the
answer back with :meth:`DeviceSetup.on`.

The steps, in order: find the Metering endpoint (``discover``), read the Metering scaling
(``metering_scale``; values are held until it is known), probe the AC measurement scaling
(``ac_scale``), read Basic (``basic``), then bind and configure reporting for Metering and,
when the device has it, Electrical Measurement. A device that refuses binding or reporting
on a cluster is polled on that cluster instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from ..protocols import zcl

METERING = zcl.METERING
AC = zcl.ELECTRICAL_MEASUREMENT
CONFIGURED, POLLED = "configured", "polled"


class Step(str, enum.Enum):
    DISCOVER = "discover"
    METERING_SCALE = "metering_scale"
    AC_SCALE = "ac_scale"
    BASIC = "basic"
    BIND_METERING = "bind_metering"
    CONFIGURE_METERING = "configure_metering"
    BIND_AC = "bind_ac"
    CONFIGURE_AC = "configure_ac"
    READY = "ready"

    def __str__(self) -> str:
        return self.value


ORDER: tuple[Step, ...] = tuple(Step)


class Outcome(enum.Enum):
    OK = "ok"                # answered, and what was asked for is there
    UNUSABLE = "unusable"    # answered, but not usable (scaling with a 0, no AC values)
    REFUSED = "refused"      # answered with an error status
    NO_ANSWER = "no_answer"  # no answer after the retries (or not delivered)


class Effect(enum.Enum):
    ADVANCE = "advance"          # go to the next step that applies
    RETRY_LATER = "retry_later"  # stay on this step; ask again a poll interval later
    HAS_AC = "has_ac"
    NO_AC = "no_ac"
    POLLED = "polled"            # the step's cluster is polled
    CONFIGURED = "configured"    # the step's cluster reports on its own


# The cluster a bind/configure step is about.
CLUSTER: dict[Step, int] = {Step.BIND_METERING: METERING, Step.CONFIGURE_METERING: METERING,
                            Step.BIND_AC: AC, Step.CONFIGURE_AC: AC}

_ANY_FAILURE = (Outcome.UNUSABLE, Outcome.REFUSED, Outcome.NO_ANSWER)


def _all(step: Step, *effects: Effect) -> dict[tuple[Step, Outcome], tuple[Effect, ...]]:
    return {(step, o): effects for o in Outcome}


def _ok_else(step: Step, ok: tuple[Effect, ...], failed: tuple[Effect, ...]
             ) -> dict[tuple[Step, Outcome], tuple[Effect, ...]]:
    return {(step, Outcome.OK): ok, **{(step, o): failed for o in _ANY_FAILURE}}


ADV = Effect.ADVANCE
# (step, outcome) -> effects, applied in order. A step without an entry for an outcome
# cannot have it (and a stale answer for another step than the current one is ignored).
TRANSITIONS: dict[tuple[Step, Outcome], tuple[Effect, ...]] = {
    **_all(Step.DISCOVER, ADV),  # no endpoint found: the configured/default one is used
    # values wait for the Metering scaling: never guess it, ask again later
    **_ok_else(Step.METERING_SCALE, (ADV,), (Effect.RETRY_LATER,)),
    **_ok_else(Step.AC_SCALE, (Effect.HAS_AC, ADV), (Effect.NO_AC, ADV)),
    **_all(Step.BASIC, ADV),
    **_ok_else(Step.BIND_METERING, (ADV,), (Effect.POLLED, ADV)),
    **_ok_else(Step.CONFIGURE_METERING, (Effect.CONFIGURED, ADV), (Effect.POLLED, ADV)),
    **_ok_else(Step.BIND_AC, (ADV,), (Effect.POLLED, ADV)),
    **_ok_else(Step.CONFIGURE_AC, (Effect.CONFIGURED, ADV), (Effect.POLLED, ADV)),
}


@dataclass
class DeviceSetup:
    """One device's set-up progress and what it learnt (reporting per cluster, AC or not)."""

    force_poll: bool = False          # the config says: poll it, configure no reporting
    endpoint_configured: bool = False  # the config names the Metering endpoint
    step: Step = Step.DISCOVER
    endpoint_known: bool = False       # configured, discovered or seen in a Metering frame
    has_ac: bool | None = None
    reporting: dict[int, str] = field(default_factory=dict)  # cluster -> configured|polled

    def __post_init__(self) -> None:
        self.restart()

    # -- what the driver asks -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.step is Step.READY

    def remaining(self) -> list[str]:
        """The steps still to do, for a message to the technician."""
        return [s.value for s in ORDER[ORDER.index(self.step):] if s is not Step.READY]

    def pending(self) -> Step | None:
        """The step whose request is to be sent now, past the ones that do not apply
        (their effects applied); None once the device is ready."""
        while not self.ready:
            skip = self._skip()
            if skip is None:
                return self.step
            self._apply(skip)
        return None

    def on(self, step: Step, outcome: Outcome) -> Effect | None:
        """An answer (or its absence) to ``step``'s request: ADVANCE or RETRY_LATER for the
        driver's schedule; None for an answer to a step that is not the current one."""
        effects = TRANSITIONS.get((step, outcome))
        if step is not self.step or effects is None:
            return None
        self._apply(effects)
        return Effect.RETRY_LATER if Effect.RETRY_LATER in effects else Effect.ADVANCE

    def restart(self) -> None:
        """Forget what was learnt (a rejoin: it may be another device) and start again."""
        self.step = ORDER[0]
        self.endpoint_known = self.endpoint_configured
        self.has_ac = None
        self.reporting = {}

    def polled_clusters(self) -> list[int]:
        if not self.ready:
            return []
        out = []
        if self.reporting.get(METERING) != CONFIGURED:
            out.append(METERING)
        if self.has_ac and self.reporting.get(AC) != CONFIGURED:
            out.append(AC)
        return out

    # -- the tables at work -------------------------------------------------------------
    def _skip(self) -> tuple[Effect, ...] | None:
        for applies, effects in SKIPS.get(self.step, ()):
            if applies(self):
                return effects
        return None

    def _apply(self, effects: tuple[Effect, ...]) -> None:
        for e in effects:
            if e is Effect.ADVANCE:
                self.step = ORDER[ORDER.index(self.step) + 1]
            elif e is Effect.HAS_AC or e is Effect.NO_AC:
                self.has_ac = e is Effect.HAS_AC
            elif e is Effect.POLLED or e is Effect.CONFIGURED:
                self.reporting[CLUSTER[self.step]] = e.value


Rule = tuple[Callable[[DeviceSetup], bool], tuple[Effect, ...]]


def _no_ac(s: DeviceSetup) -> bool:
    return not s.has_ac


def _forced(s: DeviceSetup) -> bool:
    return s.force_poll


def _bind_failed(step: Step) -> Callable[[DeviceSetup], bool]:
    return lambda s: s.reporting.get(CLUSTER[step]) == POLLED


# step -> (condition, effects) rules, first match wins: when a step does not apply.
SKIPS: dict[Step, tuple[Rule, ...]] = {
    Step.DISCOVER: ((lambda s: s.endpoint_known, (ADV,)),),
    Step.BIND_METERING: ((_forced, (Effect.POLLED, ADV)),),
    Step.CONFIGURE_METERING: ((_forced, (Effect.POLLED, ADV)),
                              (_bind_failed(Step.CONFIGURE_METERING), (ADV,))),
    Step.BIND_AC: ((_no_ac, (ADV,)), (_forced, (Effect.POLLED, ADV))),
    Step.CONFIGURE_AC: ((_no_ac, (ADV,)), (_forced, (Effect.POLLED, ADV)),
                        (_bind_failed(Step.CONFIGURE_AC), (ADV,))),
}
